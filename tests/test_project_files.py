"""The repository's citation and licence files: CITATION.cff loads as YAML with CFF 1.2.0's required fields
and cites the paper; LICENSE is the MIT licence pyproject.toml declares; the README's BibTeX names the paper."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_citation_cff_has_the_required_fields_and_the_paper():
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["message"] and cff["authors"] == [{"name": "the mkdlib authors"}]
    assert cff["title"].startswith("mkdlib: Multiresolution Knowledge Distillation")
    assert (cff["license"], cff["version"]) == ("MIT", "0.1.0")
    paper = cff["preferred-citation"]
    assert paper["type"] == "conference-paper" and paper["year"] == 2021
    assert paper["title"] == "Multiresolution Knowledge Distillation for Anomaly Detection"
    assert [a["family-names"] for a in paper["authors"]] == ["Salehi", "Sadjadi", "Baselizadeh", "Rohban", "Rabiee"]
    assert (paper["start"], paper["end"]) == (14902, 14912)
    assert "2011.11108" in paper["identifiers"][0]["value"]


def test_the_licence_is_mit_as_pyproject_declares():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the mkdlib authors" in text
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()


def test_the_readme_cites_the_paper():
    readme = (ROOT / "README.md").read_text()
    assert "@inproceedings{salehi2021multiresolution," in readme and "pages     = {14902--14912}" in readme
    assert "CITATION.cff" in readme.split("## Citing")[1]
