"""Connection: where the store is and how to reach it, resolved once from arguments, then the environment, then the
defaults; frozen, picklable (it travels to Ray actors), and it never shows the API key."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from knnbe_qdrant import Connection, EdgeStore, InvalidInputError, SkillMapper, open_store
from knnbe_qdrant._schema import DEFAULT_PREFIX


def test_an_explicit_path_wins_over_a_server_in_the_environment(tmp_path):
    env = {"QDRANT_URL": "http://qdrant.example:6333", "KNNBE_STORE": "/elsewhere"}
    c = Connection.resolve(tmp_path / "s", environ=env)
    assert c.path == tmp_path / "s" and c.url is None and not c.is_server


def test_the_environment_fills_what_arguments_leave_open(tmp_path):
    env = {"QDRANT_URL": "http://qdrant.example:6333", "QDRANT_API_KEY": "k", "KNNBE_PREFIX": "team_",
           "QDRANT_TIMEOUT": "7", "QDRANT_PREFER_GRPC": "true"}
    c = Connection.resolve(environ=env)
    assert (c.url, c.api_key, c.prefix, c.timeout, c.prefer_grpc) == ("http://qdrant.example:6333", "k", "team_", 7,
                                                                      True)
    c = Connection.resolve(url="http://other:6333", api_key="a", prefix="p_", timeout=3, prefer_grpc=False,
                           environ=env)
    assert (c.url, c.api_key, c.prefix, c.timeout, c.prefer_grpc) == ("http://other:6333", "a", "p_", 3, False)
    assert Connection.resolve(environ={"KNNBE_STORE": str(tmp_path)}).path == tmp_path
    home = Connection.resolve(environ={"XDG_DATA_HOME": str(tmp_path)})
    assert home.path == tmp_path / "knnbe-qdrant" / "store"
    assert Connection.resolve(url="http://x:6333", environ={}).prefix == DEFAULT_PREFIX


@pytest.mark.parametrize("value", ["soon", "1.5", ""])
def test_a_bad_timeout_in_the_environment_is_named(value):
    if not value:
        assert Connection.resolve(url="http://x:6333", environ={"QDRANT_TIMEOUT": value}).timeout is None
        return
    with pytest.raises(InvalidInputError, match="QDRANT_TIMEOUT"):
        Connection.resolve(url="http://x:6333", environ={"QDRANT_TIMEOUT": value})


def test_it_is_frozen_picklable_and_keeps_the_key_out_of_its_repr(tmp_path):
    c = Connection.resolve(url="https://q:6333", api_key="s3cret", environ={})
    assert pickle.loads(pickle.dumps(c)) == c
    assert "s3cret" not in repr(c)
    with pytest.raises(AttributeError):
        c.url = "http://elsewhere"  # type: ignore[misc]
    with pytest.raises(InvalidInputError):
        Connection(path=tmp_path, url="http://x:6333")
    with pytest.raises(InvalidInputError):
        Connection()


def test_its_environment_resolves_back_to_it(tmp_path):
    for c in (Connection.resolve(tmp_path, environ={}),
              Connection.resolve(url="https://q:6333", api_key="k", prefix="p_", timeout=9, prefer_grpc=True,
                                 environ={})):
        assert Connection.resolve(environ=c.environment()) == c


def test_the_library_opens_a_store_through_a_connection_or_a_path(built_stores, tmp_path):
    path = Path(built_stores["embedded"].path)
    built_stores["embedded"].close()  # Edge allows one holder at a time
    try:
        with open_store(Connection.resolve(path)) as store:
            assert isinstance(store, EdgeStore) and store.exists()
        with SkillMapper.open(path) as mapper:
            assert mapper.map(["Programming in Python"], top=1)[0].skills
    finally:
        built_stores["embedded"] = EdgeStore(path)
