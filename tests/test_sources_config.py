"""The sources file and the offline sources: validation errors name the problem; tile math is mercantile's."""

from datetime import date
from pathlib import Path

import mercantile
import pytest

from pipelines.sources import SourceContext, SourceUnavailable, load_sources_file
from pipelines.sources.local import LocalDirSource, UrlListSource
from pipelines.sources.xyz_tiles import XyzTilesSource, spread_order, tile_range

REPO = Path(__file__).resolve().parents[1]


def test_shipped_sources_files_are_valid():
    spec = load_sources_file(REPO / "config" / "sources.yaml")
    assert set(spec.classes) == {"dogs", "null", "satellite"}
    kinds = {s.kind for specs in spec.classes.values() for s in specs}
    assert {"dog_ceo", "picsum", "openverse", "xyz_tiles"} <= kinds
    offline = load_sources_file(REPO / "config" / "sources.offline.example.yaml")
    assert {s.kind for specs in offline.classes.values() for s in specs} == {"local_dir"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("classes: {dogs: [{name: a, kind: nope}]}", "kind"),
        ("classes: {cats: []}", "cats"),
        ("classes: {dogs: [{name: a, kind: dog_ceo}, {name: a, kind: dog_ceo}]}", "unique"),
        ("classes: {satellite: [{name: t, kind: xyz_tiles, zooms: [3]}]}", "bbox"),
        ("classes: [", "not valid YAML"),
    ],
)
def test_bad_sources_file_names_the_problem(tmp_path, text, message):
    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_sources_file(f)


def test_null_class_key_and_relative_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    f = tmp_path / "s.yaml"
    f.write_text(
        "max_new_per_source: 7\nclasses:\n  null:\n    - {name: here, kind: local_dir, path: imgs, max_new: 3}\n"
    )
    spec = load_sources_file(f)
    [(src, quota)] = spec.sources("null", base_dir=tmp_path)
    assert quota == 3 and Path(src.path) == tmp_path / "imgs"


def _ctx() -> SourceContext:
    import requests

    return SourceContext(requests.Session(), (1, 1), date(2026, 11, 24))


def test_tile_range_matches_mercantile():
    bbox = (-122.55, 37.60, -122.30, 37.85)
    for z in (10, 14, 16):
        tiles = list(mercantile.tiles(*bbox, zooms=[z]))
        x0, y0, x1, y1 = tile_range(bbox, z)
        assert {(t.x, t.y) for t in tiles} == {(x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)}


def test_spread_order_is_a_permutation_that_jumps():
    for n in (1, 2, 7, 100, 2701):
        order = list(spread_order(n))
        assert sorted(order) == list(range(n))
    first = list(spread_order(1000))[:10]
    assert max(first) - min(first) > 500  # the first few tiles span the area


def test_xyz_candidates_fill_template_and_date(monkeypatch):
    src = XyzTilesSource(
        name="t",
        provider=None,
        url_template="http://127.0.0.1:1/{date}/{z}/{x}/{y}.jpg",
        bbox=(-10.0, -10.0, 10.0, 10.0),
        zooms=[3, 4],
        license="PD",
    )
    cands = list(src.candidates(_ctx()))
    expected = len(list(mercantile.tiles(-10, -10, 10, 10, zooms=[3, 4])))
    assert len(cands) == expected == len({c.url for c in cands})
    c = cands[0]
    assert c.url == f"http://127.0.0.1:1/2026-11-24/{c.meta['z']}/{c.meta['x']}/{c.meta['y']}.jpg"
    assert c.license == "PD" and {c.meta["z"] for c in cands[:2]} == {3, 4}  # zooms interleaved


def test_named_provider_builds_real_urls():
    src = XyzTilesSource(name="usgs", provider="USGS.USImagery", bbox=(-122.5, 37.7, -122.4, 37.8), zooms=[12])
    urls = [c.url for c in src._zoom(12, "2026-11-24")]
    assert urls and all(u.startswith("https://basemap.nationalmap.gov/") and "/tile/12/" in u for u in urls)


def test_url_list_and_local_dir(tmp_path):
    lst = tmp_path / "urls.txt"
    lst.write_text("# mirror\nhttp://127.0.0.1:9/a.jpg\n\n  http://127.0.0.1:9/b.jpg  \n")
    assert [c.url for c in UrlListSource(str(lst)).candidates(_ctx())] == [
        "http://127.0.0.1:9/a.jpg",
        "http://127.0.0.1:9/b.jpg",
    ]
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.JPG", "d/sub/a.png", "d/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    cands = list(LocalDirSource(str(tmp_path / "d")).candidates(_ctx()))
    assert [c.meta["path"] for c in cands] == ["b.JPG", "sub/a.png"]
    assert cands[0].url.startswith("file://")
    # Only local_dir candidates may be read from disk; a url_list's file: line is a URL a file listed, not a file.
    assert all(c.local for c in cands)
    lst.write_text("file:///etc/passwd\n")
    assert [(c.url, c.local) for c in UrlListSource(str(lst)).candidates(_ctx())] == [("file:///etc/passwd", False)]


def test_url_list_line_numbers_survive_bom_and_crlf(tmp_path):
    """Written by Notepad: a BOM and CRLF line ends; the first URL is clean and every line keeps its number."""
    lst = tmp_path / "urls.txt"
    lst.write_bytes("\ufeffhttp://127.0.0.1:9/a.jpg\r\n# comment\r\nhttp://127.0.0.1:9/\u00e4\u2028.jpg\r\n".encode())
    cands = list(UrlListSource(str(lst)).candidates(_ctx()))
    assert [(c.url, c.meta["line"]) for c in cands] == [
        ("http://127.0.0.1:9/a.jpg", 1),
        ("http://127.0.0.1:9/\u00e4\u2028.jpg", 3),
    ]


def test_url_list_that_is_not_utf8_names_the_file_and_line(tmp_path):
    """A Latin-1 file is one line of error naming where, before anything is fetched; not a bare UnicodeDecodeError."""
    lst = tmp_path / "urls.txt"
    lst.write_bytes(b"http://127.0.0.1:9/a.jpg\n# caf\xc3\xa9\nhttp://127.0.0.1:9/caf\xe9.jpg\n")
    with pytest.raises(SourceUnavailable) as err:
        next(UrlListSource(str(lst), name="mirror").candidates(_ctx()))
    assert str(err.value) == (
        f"source 'mirror': URL list {lst}, line 3, byte 23: not UTF-8 (invalid continuation byte)"
    )
