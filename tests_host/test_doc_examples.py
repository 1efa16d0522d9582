"""Every command output shown in README.md and docs/ is what the current code prints (tests_host/doc_examples.py)."""

import pytest

import doc_examples

EXAMPLES = doc_examples.examples()


def test_the_docs_show_examples_and_each_is_well_formed():
    assert len(EXAMPLES) >= 5
    for e in EXAMPLES:
        assert e.shown.startswith(f"$ {e.command}\n"), e.id


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_shown_output_is_current(example):
    diff = doc_examples.stale(example)
    assert diff is None, f"{example.id} is stale; run `make docs-examples`:\n{diff}"


def test_a_changed_output_is_caught(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- example: quant inspect nosuch.espdl -->\n```text\n$ quant inspect nosuch.espdl\nerror: old text\n```\n")
    [e] = doc_examples.examples([doc])
    assert doc_examples.stale(e) and "error: old text" in doc_examples.stale(e)
    doc_examples.write([doc])
    [e] = doc_examples.examples([doc])
    assert doc_examples.stale(e) is None and "[exit 2]" in e.shown
