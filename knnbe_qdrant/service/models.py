"""The JSON bodies of the HTTP API (pydantic models, which also make the OpenAPI document at /docs). Field names are
the command line's own: `id`, `label`, `description` for a skill; `skill`, `text` for a memory sentence."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from .._errors import InvalidInputError
from .._text import (
    MAX_DESCRIPTION,
    MAX_LABEL,
    MAX_MEMORY_TEXT,
    MAX_SKILL_ID,
    MAX_SKILL_REF,
    MAX_SOURCE,
    VISIBLE,
    check_optional_text,
    check_text,
)

MAX_CHARS, MAX_SENTENCES, MAX_TOP = 5_000, 256, 100
"""The service's defaults for --max-chars and --max-sentences, and the largest `top`; the schema it serves carries
the configured ones (app.openapi_with_limits)."""


def _checked(max_chars: int, *, optional: bool = False) -> AfterValidator:
    """A text checked as every door checks it (_text.check_text: valid Unicode, not empty once control characters
    are out, at most `max_chars`), so that a bad one is a 422 naming its field before it reaches a shared batch."""
    check = check_optional_text if optional else check_text
    return AfterValidator(lambda v: check(v, "the text", max_chars=max_chars))


def _text(max_chars: int) -> Any:
    # The pattern is the check's own (a visible character somewhere), so the schema says what the service takes.
    return Field(min_length=1, max_length=max_chars, pattern=VISIBLE)


Sentence = Annotated[str, _text(MAX_MEMORY_TEXT), _checked(MAX_MEMORY_TEXT)]
MapSentence = Annotated[str, _text(MAX_CHARS), _checked(MAX_CHARS)]
"""Its bound in the schema is the service's --max-chars (app.openapi_with_limits)."""
PostingText = Annotated[str, _text(MAX_CHARS * MAX_SENTENCES), _checked(MAX_CHARS * MAX_SENTENCES)]
SkillId = Annotated[str, _text(MAX_SKILL_ID), _checked(MAX_SKILL_ID)]
SkillName = Annotated[str, _text(MAX_SKILL_REF), _checked(MAX_SKILL_REF)]
"""A skill named by its id or its exact preferred label."""
Label = Annotated[str, _text(MAX_LABEL), _checked(MAX_LABEL)]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION), _checked(MAX_DESCRIPTION, optional=True)]
Source = Annotated[str, _text(MAX_SOURCE), _checked(MAX_SOURCE)]
Top = Annotated[int, Field(ge=1, le=MAX_TOP)]


def _whole_number(value: Any) -> Any:
    # JSON Schema's "integer" takes 3.0 (a generated client may send it), which pydantic's strict int refuses;
    # its lax int would take "3" and true, which the schema does not allow.
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise InvalidInputError("a whole number (the skill's revision as read)")  # a ValueError: pydantic's 422


Revision = Annotated[Annotated[int, Field(ge=0)] | None, BeforeValidator(_whole_number),
                     Field(None, description="the skill's `revision` as you read it: the edit is refused (409) "
                           "if another edit of the skill came first")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class MapRequest(_Body):
    sentences: list[MapSentence] = Field(max_length=MAX_SENTENCES, description="the sentences to map, each "
                                         "non-empty")
    top: Top = Field(10, description="skills per sentence")
    decompose: StrictBool | None = Field(None, description="also map each piece of a sentence that names several "
                                         "skills (`map --decompose`); default: the store's (on for the shipped model)")


class EvidenceOut(BaseModel):
    text: str
    similarity: float


class SkillOut(BaseModel):
    id: str
    label: str
    score: float
    bi_encoder: float
    knn: float
    evidence: list[EvidenceOut]
    piece: str | None = Field(None, description="with decomposition: the piece of the sentence the match came from "
                              "(absent when it came from the whole sentence)")
    tokens: list[str] | None = Field(None, description="with token-level matching: the words of the sentence the "
                                     "skill attended to most, in the sentence's order")


class SentenceOut(BaseModel):
    text: str
    skills: list[SkillOut]


class MapResponse(BaseModel):
    results: list[SentenceOut] = Field(description="one per sentence, in order; each the same object as a line of "
                                       "`knnbe-qdrant map --json`")


class PostingRequest(_Body):
    text: PostingText = Field(description="the whole posting; it is split into sentences as map-postings does")
    id: SkillId | None = None
    top: Top = Field(20, description="skills for the posting")
    sentence_top: Top = Field(10, description="skills kept per sentence")
    decompose: StrictBool | None = Field(None, description="as for /map")


class SkillCreate(_Body):
    id: SkillId
    label: Label
    description: Description = ""


class SkillUpdate(_Body):
    skill: SkillName = Field(description="skill id or exact preferred label")
    label: Label | None = None
    description: Description | None = None
    revision: Revision


class SkillRef(_Body):
    skill: SkillName = Field(description="skill id or exact preferred label")
    revision: Revision


class MemoryAdd(_Body):
    skill: SkillName = Field(description="skill id or exact preferred label")
    text: Sentence
    source: Source = "curator"


class MemoryRef(_Body):
    skill: SkillName
    text: Sentence


class MemoryRelabel(_Body):
    skill: SkillName = Field(description="its skill now")
    text: Sentence
    to: SkillName = Field(description="its new skill")


class ErrorOut(BaseModel):
    """Every answer other than 2xx: one line the client can show."""

    error: str = Field(description="what went wrong and, where there is one, what to do")


class Message(BaseModel):
    result: str


class Edited(Message):
    skill: str = Field(description="the skill's id: name it so in later calls (skills/update, skills/retire, ...)")
    text: str | None = Field(None, description="the memory sentence, as stored")


class SkillEdited(Message):
    skill: str = Field(description="the skill's id")
    revision: int = Field(description="the skill's revision after the edit: name it in the next edit of the skill, "
                          "and an edit made in between is never overwritten")


CURSOR = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
"""A listing's page cursor: the id of the first point of the next page."""


class Tail(BaseModel):
    items: list[dict[str, Any]]
    truncated: bool = Field(description="true when there were more than `limit`")


class Listing(Tail):
    next: str | None = Field(None, pattern=CURSOR, description="where there are more: pass it as `after` for the "
                             "next page (a listing's pages follow the store's point order, so an item that exists "
                             "throughout is listed once)")
