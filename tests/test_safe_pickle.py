"""`safe_load` reads the reference's pickles and torch.save files, and never runs what a pickle names.

Each malicious payload is first shown to work under the real `pickle.loads` (it creates its file), so the
tests that `safe_load` leaves no file behind could fail.
"""
from __future__ import annotations

import builtins
import copyreg
import io
import json
import os
import pathlib
import pickle
import subprocess
from collections import Counter, OrderedDict

import pytest
import torch
from conftest import SHARED_REFERENCE
from hypothesis import given, settings
from hypothesis import strategies as st

from txl_core.safe_pickle import Inert, is_inert, safe_load

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "tokenizer"
DATA = {"list": [1, 2.5, None, True], "tuple": (1, "a"), "set": {3, 4}, "frozen": frozenset({"x"}),
        "bytes": b"\x00\xffab", "empty_bytes": b"", "counter": Counter(a=3, b=1),
        "ordered": OrderedDict([("z", 1), ("a", 2)]), "nested": {"k": [{"deep": (b"", 1.0)}]}}


def _tok_small_pickles():
    cases = [pytest.param(FIXTURES / "tok_small" / "vocab.pkl", id="fixture")]
    shared = SHARED_REFERENCE / "tok_small" / "vocab.pkl"
    marks = [] if shared.is_file() else [pytest.mark.skip(reason=f"{shared} not found")]
    return cases + [pytest.param(shared, id="shared", marks=marks)]


def _assert_same(loaded, expected):
    assert loaded == expected
    for key, value in expected.items():
        assert type(loaded[key]) is type(value), key


@pytest.mark.parametrize("path", _tok_small_pickles())
def test_hf_vocab_pkl_keeps_data_and_neutralises_objects(path):
    golden = json.loads((FIXTURES / "golden_tokenizer.json").read_text())
    state = safe_load(path)
    assert sorted(state) == golden["vocab_pkl_keys"]
    assert state["idx2sym"] == golden["idx2sym"] and state["unk_idx"] == golden["unk_idx"]
    assert type(state["sym2idx"]) is OrderedDict and type(state["counter"]) is Counter
    assert state["sym2idx"] == {s: i for i, s in enumerate(golden["idx2sym"])}
    for key in ("moses_tokenizer", "moses_detokenizer", "moses_punct_normalizer", "tokens_trie",
                "punctuation_with_space_around_pattern"):
        assert is_inert(state[key]), key
    assert state["moses_tokenizer"].module == "sacremoses.tokenize"
    assert all(is_inert(t) for t in state["_added_tokens_decoder"].values())


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_round_trips_in_every_protocol(protocol):
    _assert_same(safe_load(pickle.dumps(DATA, protocol=protocol)), DATA)


@pytest.mark.parametrize("zipped", [False, True], ids=["legacy", "zip"])
def test_torch_save_files(tmp_path, zipped):
    path = tmp_path / "vocab.pt"
    torch.save(DATA, path, _use_new_zipfile_serialization=zipped)
    assert (path.read_bytes()[:2] == b"PK") == zipped
    _assert_same(safe_load(path), DATA)


@pytest.mark.parametrize("zipped", [False, True], ids=["legacy", "zip"])
def test_torch_tensors_become_placeholders(tmp_path, zipped):
    path = tmp_path / "t.pt"
    torch.save({"w": torch.ones(3), "n": 1}, path, _use_new_zipfile_serialization=zipped)
    loaded = safe_load(path)
    assert loaded["n"] == 1 and is_inert(loaded["w"])


class _Reconstructed:
    def __init__(self, cls, base, state):
        self.args = cls, base, state

    def __reduce__(self):
        return copyreg._reconstructor, self.args


def test_reconstructor_only_for_allowed_types():
    allowed = safe_load(pickle.dumps(_Reconstructed(Counter, dict, {"a": 1}), protocol=2))
    assert allowed == Counter(a=1) and type(allowed) is Counter
    refused = pickle.dumps(_Reconstructed(pathlib.PurePosixPath, object, None), protocol=2)
    assert is_inert(safe_load(refused))


class _Payload:
    """Pickles as `func(*args)`: the real unpickler calls func while loading."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Stateful:
    """Writes its file when the unpickler hands it its state (BUILD -> __setstate__)."""

    def __init__(self, target):
        self.target = target

    def __setstate__(self, state):
        pathlib.Path(state["target"]).touch()


def _payloads(target: pathlib.Path) -> dict[str, object]:
    t = str(target)
    return {
        "os.system": _Payload(os.system, f"touch '{t}'"),
        "builtins.exec": _Payload(builtins.exec, f"open({t!r}, 'w').close()"),
        "builtins.eval": _Payload(builtins.eval, f"open({t!r}, 'w')"),
        "subprocess.call": _Payload(subprocess.call, ["touch", t]),
        "Path.touch": _Payload(pathlib.Path.touch, pathlib.Path(t)),
        "__setstate__": _Stateful(t),
    }


_PAYLOAD_NAMES = list(_payloads(pathlib.Path("x")))


@pytest.mark.parametrize("name", _PAYLOAD_NAMES)
def test_payload_is_live_under_real_pickle(tmp_path, name):
    target = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_payloads(target)[name]))
    assert target.exists(), "the payload must really create its file, or the safety tests prove nothing"


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("name", _PAYLOAD_NAMES)
def test_payload_alone_becomes_placeholder(tmp_path, name, protocol):
    target = tmp_path / "pwned"
    loaded = safe_load(pickle.dumps(_payloads(target)[name], protocol=protocol))
    assert not target.exists()
    assert is_inert(loaded)


@pytest.mark.parametrize("form", ["hf_pickle", "torch_legacy", "torch_zip"])
@pytest.mark.parametrize("name", _PAYLOAD_NAMES)
def test_payload_inside_a_vocab_dict(tmp_path, name, form):
    target = tmp_path / "pwned"
    state = {"idx2sym": ["<eos>", "<unk>"], "sym2idx": OrderedDict([("<eos>", 0), ("<unk>", 1)]),
             "moses_tokenizer": _payloads(target)[name]}
    path = tmp_path / "vocab.pkl"
    if form == "hf_pickle":
        path.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=form == "torch_zip")
    loaded = safe_load(path)
    assert not target.exists()
    assert loaded["idx2sym"] == ["<eos>", "<unk>"] and is_inert(loaded["moses_tokenizer"])


def test_persistent_ids_are_refused():
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", 7) if obj == "external" else None

    buf = io.BytesIO()
    Pickler(buf).dump(["external", "kept"])
    loaded = safe_load(buf.getvalue())
    assert is_inert(loaded[0]) and loaded[1] == "kept"


def test_huge_bytes_request_is_not_allocated():
    assert is_inert(safe_load(pickle.dumps(_Payload(bytes, 10**15), protocol=2)))


def test_placeholder_ignores_arguments_and_state(tmp_path):
    cls = safe_load(pickle.dumps(os.system))  # a bare global: the placeholder class itself
    assert issubclass(cls, Inert) and (cls.module, cls.name) == ("posix", "system")
    obj = cls(f"touch '{tmp_path / 'pwned'}'", key=2)
    obj.__setstate__({"a": 1})
    obj["k"] = "v"
    obj.append(1)
    assert vars(obj) == {} and repr(obj) == "<inert posix.system>"
    assert not (tmp_path / "pwned").exists()


def _legacy(*objs) -> bytes:
    return b"".join(pickle.dumps(o, protocol=2) for o in objs)


@pytest.mark.parametrize("data", [
    pytest.param(b"", id="empty"),
    pytest.param(b"not a pickle at all", id="text"),
    pytest.param(pickle.dumps(DATA)[:-20], id="truncated"),
    pytest.param(pickle.dumps(12345), id="bare-int"),
    pytest.param(_legacy(119547037146038801333356, 999, {}), id="legacy-bad-protocol"),
    pytest.param(_legacy(119547037146038801333356, 1001), id="legacy-truncated"),
    pytest.param(b"PK\x03\x04" + b"\x00" * 40, id="bad-zip"),
])
def test_unreadable_input_is_one_line_value_error(data):
    with pytest.raises(ValueError) as info:
        safe_load(data)
    assert "\n" not in str(info.value) and "not a readable pickle" in str(info.value)


def test_zip_without_data_pkl(tmp_path):
    import zipfile
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/other.txt", "hi")
    with pytest.raises(ValueError, match="data.pkl"):
        safe_load(path)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        safe_load(tmp_path / "absent.pkl")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_load_or_raise_value_error(data):
    try:
        safe_load(b"\x80\x04" + data)
    except ValueError:
        pass
