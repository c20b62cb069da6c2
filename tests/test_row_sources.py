"""The digest that names a resumable regeneration folder changes with the code that makes rows, and only with it."""
from robustmed.provenance import row_source_sha256


def _tree(root):
    for relative, text in {"attacks/pgd.py": "step = 1", "defenses/pni.py": "noise = 0.1",
                           "robustmed/harness.py": "judge = 1", "robustmed/reports/tables.py": "width = 80",
                           "robustmed/cli.py": "main = 1"}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_an_engine_edit_changes_the_digest_and_a_report_edit_does_not(tmp_path):
    _tree(tmp_path)
    before = row_source_sha256(tmp_path)
    (tmp_path / "robustmed/reports/tables.py").write_text("width = 100")
    (tmp_path / "robustmed/cli.py").write_text("main = 2")
    (tmp_path / "attacks/__pycache__").mkdir()
    (tmp_path / "attacks/__pycache__/pgd.pyc").write_bytes(b"\0")
    assert row_source_sha256(tmp_path) == before
    (tmp_path / "attacks/pgd.py").write_text("step = 2")
    assert row_source_sha256(tmp_path) != before
