"""tools/fault_drill.py: rows by name, a Markdown table, exit 0 only when no row lost data.
(The whole drill trains a dozen tiny runs; here one cheap row keeps the tool from rotting.)"""


def test_one_row_prints_the_table_and_exits_0(load_tool, tmp_path, capsys):
    drill = load_tool("fault_drill")
    assert drill.main_(["--workdir", str(tmp_path), "--only", "bad_torch_file"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| accident | what happened | data lost | s |"
    assert out[2].startswith("| **bad_torch_file**: ") and "| none (nothing written) |" in out[2]


def test_unknown_rows_are_named(load_tool, capsys):
    drill = load_tool("fault_drill")
    assert drill.main_(["--only", "kill_9,typo"]) == 2
    assert "unknown accident(s) ['typo']" in capsys.readouterr().err
