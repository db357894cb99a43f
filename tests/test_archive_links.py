"""The link rule (docs/archive-rules.md, "Safety"): links judged against the tree after
extraction, through each other, identically by ``backupctl verify`` and the file restore;
and a property test over generated member lists with real extractions."""

from __future__ import annotations

import os
import posixpath

import pytest
from _archive_helpers import extract, links_outside, snapshot, spec, verdicts, write_tar
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from backupkit.restore.files import UnsafeArchive, UnsafeTarget
from backupkit.verify import verify_artifact

D = "d0/d1/d2/d3/d4/d5/d6"

# Each: members, and the members refused with (a fragment of) the reason. The first ones
# are the escapes of issue 9: every link here looks safe on its own.
ESCAPES = {
    "chained-up-link": ([spec(f"{D}/", "dir"), spec(f"{D}/up", "symlink", "../../../../../../.."),
                         spec("shadow", "symlink", f"{D}/up/../etc/shadow")],
                        {"shadow": "climbs above the root"}),
    "issue-example": ([spec(f"{D}/", "dir"), spec(f"{D}/up", "symlink", "../../../../.."),
                       spec("shadow", "symlink", f"{D}/up/../../../etc/shadow")],
                      {"shadow": "climbs above the root"}),
    "dot-then-dotdot": ([spec("s", "symlink", "."), spec("t", "symlink", "s/..")], {"t": "climbs above the root"}),
    "dotdot-before-dot": ([spec("t", "symlink", "s/.."), spec("s", "symlink", ".")], {"t": "climbs above the root"}),
    "through-a-link-to-a-link": ([spec("a/", "dir"), spec("a/x", "symlink", ".."), spec("b", "symlink", "a/x"),
                                  spec("c", "symlink", "b/..")], {"c": "climbs above the root"}),
    "member-below-earlier-link": ([spec("sub/", "dir"), spec("l", "symlink", "sub"), spec("l/x")],
                                  {"l/x": "lies below 'l', a symbolic link"}),
    "link-replaces-directory": ([spec("d/", "dir"), spec("d/x"), spec("d", "symlink", "elsewhere")],
                                {"d": "members below 'd'"}),
    "link-replaces-link": ([spec("a", "symlink", "b"), spec("a", "symlink", "b/../..")],
                           {"a": "links are never replaced"}),
    "file-replaced-by-link": ([spec("a"), spec("a", "symlink", "b")], {"a": "links are never replaced"}),
    "hard-link-to-link": ([spec("f"), spec("s", "symlink", "f"), spec("h", "hardlink", "s")],
                          {"h": "which is a symbolic link"}),
    "hard-link-through-link": ([spec("d/f"), spec("l", "symlink", "d"), spec("h", "hardlink", "l/f")],
                               {"h": "goes through 'l', a symbolic link"}),
    "hard-link-to-later-file": ([spec("h", "hardlink", "f"), spec("f")], {"h": "not an earlier file"}),
    "hard-link-to-directory": ([spec("d/", "dir"), spec("h", "hardlink", "d")], {"h": "which is a directory"}),
    "absolute-target": ([spec("x", "symlink", "/etc")], {"x": "absolute path"}),
    "climbs-after-resolution": ([spec("a/b/", "dir"), spec("a/b/c", "symlink", "../../..")],
                                {"a/b/c": "climbs above the root"}),
    "loop": ([spec("a", "symlink", "b"), spec("b", "symlink", "a")], {"a": "loops", "b": "loops"}),
    "41-links": ([spec(f"l{i}", "symlink", f"l{i + 1}") for i in range(41)] + [spec("l41")],
                 {"l0": "more than 40 symbolic links"}),
    "root-is-a-link": ([spec(".", "symlink", "/")], {".": "absolute"}),
    "root-is-a-file": ([spec(".", "file", data=b"x")], {".": "can only be a directory"}),
}

SAFE = {
    "library-chain": [spec("lib/libx.so.1.2"), spec("lib/libx.so.1", "symlink", "libx.so.1.2"),
                      spec("lib/libx.so", "symlink", "libx.so.1")],
    "release-switch": [spec("releases/v2/config/app.yml"), spec("current", "symlink", "releases/v2"),
                       spec("shared/config", "symlink", "../current/config")],
    "up-to-the-root": [spec("a/b/", "dir"), spec("a/b/top", "symlink", "../.."), spec("via", "symlink", "a/b/top/a")],
    "dangling": [spec("logs/", "dir"), spec("logs/current", "symlink", "2025-03-03.log")],
    "40-links": [spec(f"l{i}", "symlink", f"l{i + 1}") for i in range(40)] + [spec("l40")],
    "hard-link-chain": [spec("f", data=b"12345"), spec("h1", "hardlink", "f"), spec("h2", "hardlink", "./h1")],
}


@pytest.mark.parametrize("case", list(ESCAPES))
def test_links_that_escape_together_are_refused_by_verify_and_restore(case, tmp_path):
    members, refused = ESCAPES[case]
    archive = write_tar(tmp_path / "a.tar", members)
    report = verify_artifact(archive, use_sidecar=False)
    safety = [r.detail for r in report.results if r.check == "tar_safety" and not r.ok]
    for name, words in refused.items():
        assert any(d.startswith(f"unsafe member {name!r}:") and words in d for d in safety), (name, safety)
    assert len(safety) == len(refused), safety
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UnsafeArchive) as err:
        extract(archive, work / "target")
    assert sorted(n for n, _ in err.value.problems) == sorted(refused)
    assert str(archive) in str(err.value)
    assert list(work.iterdir()) == []  # nothing written, not even the target


@pytest.mark.parametrize("case", list(SAFE))
def test_ordinary_links_pass_and_are_restored_as_links(case, tmp_path):
    archive = write_tar(tmp_path / "a.tar", SAFE[case])
    report = verify_artifact(archive, use_sidecar=False)
    assert report.ok, [r.detail for r in report.problems()]
    result = extract(archive, tmp_path / "t")
    tree = snapshot(tmp_path / "t")
    for name, kind, target, data, _ in SAFE[case]:
        name = name.rstrip("/")
        if kind == "symlink":
            assert tree[name] == ("link", target)
        elif kind in ("file", "hardlink"):
            assert tree[name][0] == "file"
    assert result.links == sum(1 for m in SAFE[case] if m[1] == "symlink")
    assert links_outside(tmp_path / "t") == []


def test_a_link_of_the_archive_through_a_link_already_in_the_target(tmp_path):
    """The archive alone is safe (verify passes); in this target its link would reach /etc."""
    target = tmp_path / "t"
    target.mkdir()
    (target / "ext").symlink_to("/etc")
    archive = write_tar(tmp_path / "a.tar", [spec("passwd", "symlink", "ext/passwd")])
    assert verify_artifact(archive, use_sidecar=False).ok
    with pytest.raises(UnsafeTarget, match="'passwd' of the archive would lead outside the target"):
        extract(archive, target)
    assert sorted(os.listdir(target)) == ["ext"]


def test_links_are_extracted_after_everything_else(tmp_path):
    """A directory member after a link to it must not be written through the link: it is
    refused (rule 3), and even the link pointing at a later directory is created last."""
    archive = write_tar(tmp_path / "a.tar", [spec("cur", "symlink", "v1"), spec("v1/", "dir"), spec("v1/f")])
    result = extract(archive, tmp_path / "t")
    assert result.links == 1 and (tmp_path / "t/cur/f").read_bytes() == b"v1/f"
    assert os.readlink(tmp_path / "t/cur") == "v1"


# -- the property: generated member lists, real extractions --------------------------------
DIRS = st.lists(st.sampled_from(["a", "b", "c"]), min_size=0, max_size=2).map("/".join)
PATHS = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map("/".join)


def _below(leaves: list[str]):
    return st.builds(lambda d, leaf: f"{d}/{leaf}" if d else leaf, DIRS, st.sampled_from(leaves))


TARGETS = st.lists(st.sampled_from(["a", "b", "c", "f", "l", "..", ".", "x"]), min_size=1, max_size=5).map("/".join)
_FILE = st.builds(lambda p: spec(p, "file", data=p.encode()), _below(["f", "g", "a"]))
_DIR = st.builds(lambda p: spec(p + "/", "dir"), PATHS)
_LINK = st.builds(lambda p, t: spec(p, "symlink", t), _below(["l", "m", "b"]), TARGETS)
MEMBER = st.one_of(  # weighted towards archives that can pass, so both verdicts are common
    _FILE, _FILE, _FILE, _DIR, _DIR, _LINK, _LINK, _LINK,
    st.builds(lambda p, t: spec(p, "symlink", "/" + t), PATHS, TARGETS),
    st.builds(lambda p, t: spec(p, "hardlink", t), _below(["h", "f"]), _below(["f", "g", "l"])),
    st.builds(lambda p: spec("./" + p), _below(["f", "g"])),
)


def _last_files(members: list[tuple]) -> dict[str, bytes]:
    """For names whose last member is a regular file: that file's content."""
    last: dict[str, tuple] = {}
    for m in members:
        last[posixpath.normpath(m[0])] = m
    return {n: m[3] for n, m in last.items() if m[1] == "file"}


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.lists(MEMBER, min_size=1, max_size=8))
def test_property_nothing_escapes_and_verify_agrees_with_restore(members, tmp_path_factory):
    case = tmp_path_factory.mktemp("case")
    archive = write_tar(case / "a.tar", members)
    (case / "outside").mkdir()
    before = snapshot(case)
    verify_ok, precheck_ok, outcome = verdicts(archive, case / "root")
    assert verify_ok == precheck_ok, outcome
    event("extracted" if precheck_ok else "refused")
    after = {k: v for k, v in snapshot(case).items() if k != "root" and not k.startswith("root/")}
    assert after == before  # nothing created or changed outside the root
    if not precheck_ok:
        assert not (case / "root").exists()
        return
    assert not isinstance(outcome, Exception), outcome
    assert links_outside(case / "root") == []
    for name, data in _last_files(members).items():
        p = case / "root" / name
        assert not p.is_symlink() and p.read_bytes() == data
