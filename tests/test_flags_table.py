"""README's flags table is the option table's (issue 16: the flags table for every command)."""

from __future__ import annotations

from pathlib import Path

from initdoctor.options import flags_markdown, for_command

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_flags_table_is_generated_from_the_option_table() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("<summary>Every command's flags</summary>\n\n") + len(
        "<summary>Every command's flags</summary>\n\n"
    )
    end = text.index("\n</details>\n<!-- /flags -->")
    assert text[start:end] == flags_markdown(), "regenerate README's table from options.flags_markdown()"


def test_every_option_of_every_command_has_a_row() -> None:
    table = flags_markdown()
    for command in ("inspect", "check", "compare", "fix"):
        section = table.split(f"`initdoctor {command}`", 1)[1].split("`initdoctor ", 1)[0]
        rows = [line for line in section.splitlines() if line.startswith("| `")]
        assert len(rows) == len(for_command(command)), command
    assert "| `--seed` | `0` |" in table and "| `--warn-threshold` | `1.25` |" in table
