"""The shipped memory sources: what each holds, and that made-up phrasings read as sentences."""

from __future__ import annotations

import re

from knnbe_qdrant import DEFAULT_MEMORY_SOURCES, default_memory, load_taxonomy
from knnbe_qdrant._data import ESCO_TRANSVERSAL, TRANSVERSAL, person_sentences


def test_every_transversal_skill_has_sentences_phrased_as_postings_describe_people():
    skills = load_taxonomy()
    transversal = [s for s in skills if s.reuse_level == TRANSVERSAL]
    assert ESCO_TRANSVERSAL in DEFAULT_MEMORY_SOURCES and len(transversal) == 440
    memory = default_memory(transversal, (ESCO_TRANSVERSAL,))
    assert {m.skill_id for m in memory} == {s.id for s in transversal}
    assert len(memory) == 2777  # one per label and alternative label
    # Deterministic: the same sentences on every build (point ids are made from them).
    assert [m.text for m in memory] == [m.text for m in default_memory(transversal, (ESCO_TRANSVERSAL,))]


def test_person_phrasings_are_sentences():
    """Labels that are not verb phrases are not set where a verb phrase goes ("You are good at ability to ...",
    "You be a driving force ...", "We value competent in Finnish ...")."""
    by_label = {}
    for skill in load_taxonomy():
        if skill.reuse_level == TRANSVERSAL:
            labels = list(dict.fromkeys((skill.label, *skill.alt_labels)))
            by_label.update(zip(labels, person_sentences(skill)))
    wrong = re.compile(r"\b(at|value|in|to) (ability to|competent|fluent|proficient)\b|^You be |can be able|"
                       r"how to able")
    assert not [s for s in by_label.values() if wrong.search(s)]
    assert by_label["competent in Finnish"] in {"You are competent in Finnish.",
                                                "The ideal candidate is competent in Finnish.",
                                                "We are looking for someone competent in Finnish."}
    assert "ability to" not in by_label[
        "ability to comprehend spoken and written Finnish and to speak and write in Finnish"]
    assert all(s[0].isupper() and s.endswith(".") for s in by_label.values())
