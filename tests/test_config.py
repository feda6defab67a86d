"""Config errors are one line `file: key: why`; a check over a whole table names no `<root>` key and carries no
pydantic "Value error, " prefix."""

import pytest

from tunelab.errors import TunelabError
from tunelab.evaluate.grid_config import load_grid_config


def test_whole_table_check_reads_as_its_own_message(tmp_path):
    (tmp_path / "grid.toml").write_text('checkpoint = "m"\nprompt = "red circle"\n[x]\naxis = "prompt_sr"\n'
                                        'values = ["green hexagon", "blue"]\n')
    with pytest.raises(TunelabError) as error:
        load_grid_config(tmp_path / "grid.toml")
    assert str(error.value) == (f"{tmp_path / 'grid.toml'}: Prompt S/R: 'green hexagon' is in neither prompt nor "
                                "negative_prompt")
    (tmp_path / "grid.toml").write_text('checkpoint = "m"\nsteps = 0\n')
    with pytest.raises(TunelabError, match=r"grid.toml: steps: Input should be greater than or equal to 1$"):
        load_grid_config(tmp_path / "grid.toml")
