"""The JSON bodies of the HTTP API (pydantic models, which also make the OpenAPI document at /docs). Field names are
the command line's own: `id`, `label`, `description` for a skill; `skill`, `text` for a memory sentence."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class MapRequest(_Body):
    sentences: list[str] = Field(description="the sentences to map, each non-empty")
    top: int = Field(10, ge=1, description="skills per sentence")
    decompose: bool | None = Field(None, description="also map each piece of a sentence that names several skills "
                                   "(`map --decompose`); default: the store's (on for the shipped model)")


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


class SentenceOut(BaseModel):
    text: str
    skills: list[SkillOut]


class MapResponse(BaseModel):
    results: list[SentenceOut] = Field(description="one per sentence, in order; each the same object as a line of "
                                       "`knnbe-qdrant map --json`")


class PostingRequest(_Body):
    text: str = Field(description="the whole posting; it is split into sentences as map-postings does")
    id: str | None = None
    top: int = Field(20, ge=1, description="skills for the posting")
    sentence_top: int = Field(10, ge=1, description="skills kept per sentence")
    decompose: bool | None = Field(None, description="as for /map")


class SkillCreate(_Body):
    id: str
    label: str
    description: str = ""


class SkillUpdate(_Body):
    skill: str = Field(description="skill id or exact preferred label")
    label: str | None = None
    description: str | None = None


class SkillRef(_Body):
    skill: str = Field(description="skill id or exact preferred label")


class MemoryAdd(_Body):
    skill: str = Field(description="skill id or exact preferred label")
    text: str
    source: str = "curator"


class MemoryRef(_Body):
    skill: str
    text: str


class MemoryRelabel(_Body):
    skill: str = Field(description="its skill now")
    text: str
    to: str = Field(description="its new skill")


class Message(BaseModel):
    result: str


class Listing(BaseModel):
    items: list[dict[str, Any]]
    truncated: bool = Field(description="true when there were more than `limit`")
