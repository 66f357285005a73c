"""The README runs as written: its ```python blocks execute, in order and in one namespace, in a folder holding a
(tiny) quickstart output, and every `traitlens` command line in its ```bash blocks names a real command and real
options.

A block preceded by `<!-- readme-test: skip (reason) -->` is not executed; each skipped block is reported as a
skipped test with its line and reason (`pytest -rs` lists them).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from quickstart_tiny import tiny_quickstart_config

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\(([^)]+)\)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
#: `traitlens` commands the README documents before they exist: command → why it is allowed for now.
PENDING_COMMANDS: dict[str, str] = {}


def readme_blocks(text: str) -> list[tuple[str, int, str, str | None]]:
    """(language, first line, code, skip reason or None) for every fenced block, in order.

    A skip comment applies to the next block after it (blank lines and prose in between are allowed).
    """
    blocks, lines = [], text.splitlines()
    skip: str | None = None
    i = 0
    while i < len(lines):
        m = SKIP.search(lines[i])
        if m:
            skip = m.group(1).strip()
        fence = FENCE.match(lines[i])
        if fence:
            lang, start, body = fence.group(1), i + 2, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append((lang, start, "\n".join(body) + "\n", skip))
            skip = None
        i += 1
    return blocks


def _python_blocks() -> list[tuple[int, str, str | None]]:
    return [(line, code, skip) for lang, line, code, skip in readme_blocks(README.read_text(encoding="utf-8"))
            if lang == "python"]


def test_block_parser_reads_fences_and_skip_comments() -> None:
    text = ("intro\n<!-- readme-test: skip (needs X) -->\nprose\n\n```python\na = 1\n```\n\n```bash\nls\n```\n"
            "```python\nb = a\n```\n")
    assert readme_blocks(text) == [("python", 6, "a = 1\n", "needs X"), ("bash", 10, "ls\n", None),
                                   ("python", 13, "b = a\n", None)]


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory) -> Path:
    """A folder holding `traitlens-quickstart/` from a tiny quickstart (the paths the README uses)."""
    from traitlens.quickstart import run_quickstart

    root = tmp_path_factory.mktemp("readme")
    run_quickstart(tiny_quickstart_config(root / "traitlens-quickstart", interpretable=(), train_processes=1))
    return root


@pytest.mark.slow
def test_readme_python_blocks_run_in_order(quickstart_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(quickstart_dir)
    blocks = _python_blocks()
    ran = [line for line, _, skip in blocks if skip is None]
    assert len(ran) >= 3, "the README should show a runnable Python example"
    namespace: dict[str, object] = {"__name__": "__readme__"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core machine: one thread is several times faster
    try:
        for line, code, skip in blocks:
            if skip is not None:
                continue
            try:
                exec(compile(code, f"README.md:{line}", "exec"), namespace)
            except Exception as err:
                pytest.fail(f"README.md python block at line {line} failed: {type(err).__name__}: {err}")
    finally:
        torch.set_num_threads(threads)
    # what the worked example promises to leave behind
    assert (quickstart_dir / "cdam_top1.png").stat().st_size > 0
    assert (quickstart_dir / "runs" / "eval" / "results.md").is_file()
    assert (quickstart_dir / "runs" / "pcam" / "best").is_dir()
    for name in ("train_set", "val_set", "test_set", "exp", "res"):
        assert name in namespace, f"the README uses {name} without defining it"


@pytest.mark.parametrize(("line", "reason"), [(line, skip) for line, _, skip in _python_blocks() if skip])
def test_readme_skipped_python_blocks(line: int, reason: str) -> None:
    """One skipped test per block the README marks as not runnable here, so the run lists them with the reason."""
    assert reason.strip(), f"README.md:{line}: a skip comment needs a reason"
    pytest.skip(f"README.md python block at line {line} not run: {reason}")


def _command_lines() -> list[tuple[int, list[str]]]:
    """(line, argv) for every `traitlens ...` command in the README's bash blocks (continuations joined)."""
    out = []
    for lang, line, code, _ in readme_blocks(README.read_text(encoding="utf-8")):
        if lang != "bash":
            continue
        joined = code.replace("\\\n", " ")
        for k, raw in enumerate(joined.splitlines()):
            words = shlex.split(raw, comments=True)
            if "traitlens" in words:
                words = words[words.index("traitlens"):]
                if len(words) > 1 and not words[1].startswith("-"):
                    out.append((line + k, words))
    return out


def test_readme_commands_exist_with_their_options() -> None:
    import typer

    from traitlens.cli import app

    group = typer.main.get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    lines = _command_lines()
    assert {words[1] for _, words in lines} >= {"train", "evaluate", "serve", "atlas"}
    bad = []
    for line, words in lines:
        name = words[1]
        if name not in commands:
            if name not in PENDING_COMMANDS:
                bad.append(f"README.md:{line}: no command `traitlens {name}`")
            continue
        cmd, rest = commands[name], words[2:]
        while rest and rest[0] in getattr(cmd, "commands", {}):  # a group: `traitlens data traitshapes`
            cmd, rest = cmd.commands[rest[0]], rest[1:]
        opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        bad += [f"README.md:{line}: `traitlens {name}` has no option {w.split('=')[0]}" for w in rest
                if w.startswith("--") and w.split("=")[0] not in opts]
    assert not bad, "\n".join(bad)
    for name, why in PENDING_COMMANDS.items():
        assert name not in commands, f"`traitlens {name}` exists now: drop it from PENDING_COMMANDS ({why})"
