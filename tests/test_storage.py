import pytest

from drray.errors import ConfigError


def test_claim_output_refuses_existing_unless_overwrite(tmp_path):
    from drray.storage import claim_output

    target = tmp_path / "out"
    target.mkdir()
    (target / "part-0.parquet").write_text("x")
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        claim_output(str(target), overwrite=False)
    assert (target / "part-0.parquet").exists()
    claim_output(f"file://{target}", overwrite=True)
    assert not target.exists()
