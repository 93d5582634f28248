"""The documentation as tests: every repository path it names exists, every `sasa` command it shows
parses (trainer commands with --print_config, tools with their own parser), every sbatch line names
a config that parses with its arguments, and the listed models and backends are the code's."""

import re
import shlex
from pathlib import Path

import pytest

from sasa_lightning.cli.command import TRAINER_COMMANDS, main
from sasa_lightning.cli.tools_parser import tools_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "slurm" / "README.md", ROOT / "benchmarks" / "README.md",
        *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "slurm").glob("*.sbatch"))]
TOP_FOLDERS = ("configs", "slurm", "benchmarks", "tests", "sasa_lightning", "docs")
PATH = re.compile(rf"(?<![\w/.$-])((?:{'|'.join(TOP_FOLDERS)})/[\w./{{}},*-]*[\w*}}])")
# Inline commands with placeholders are patterns, not commands (`sasa fit --config X ...`).
PLACEHOLDER = re.compile(r"<|\||\.\.\.|(^|\s)X(\s|$)")


def doc_text(doc: Path) -> str:
    text = doc.read_text()
    if doc.suffix == ".sbatch":  # the usage examples are comments
        text = "\n".join(line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#") and not line.startswith("#!"))
    return text


def expand(path: str) -> list[str]:
    """configs/strategy/deepspeed_zero{1,2,3}.yaml -> the three names."""
    match = re.search(r"\{([^}]*)\}", path)
    if not match:
        return [path]
    return [p for option in match.group(1).split(",") for p in expand(path[: match.start()] + option + path[match.end() :])]


def named_paths():
    for doc in DOCS:
        for match in PATH.finditer(doc_text(doc)):
            for path in expand(match.group(1).rstrip(".")):
                if "*" not in path:
                    yield doc.relative_to(ROOT), path


def command_lines(doc: Path) -> list[str]:
    """`sasa ...` and `sbatch ...` commands: lines of code blocks (continuations joined), and
    inline `sasa ...` spans that are whole commands."""
    lines, joined = [], ""
    in_block = doc.suffix == ".sbatch"
    for line in doc_text(doc).splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            # `sasa predict` names a command; `sasa plot runs/digits/logs/version_0` is one.
            lines += [span for span in re.findall(r"`(sasa [^`]+)`", line)
                      if len(span.split()) > 2 and not PLACEHOLDER.search(span)]
            continue
        joined += line.split(" #")[0].strip()
        if joined.endswith("\\"):
            joined = joined[:-1] + " "
            continue
        if joined.startswith(("sasa ", "sbatch ")):
            lines.append(joined)
        joined = ""
    return lines


def documented_commands():
    for doc in DOCS:
        for command in command_lines(doc):
            yield pytest.param(command, id=f"{doc.name}: {command[:70]}")


@pytest.mark.parametrize("doc, path", [pytest.param(doc, path, id=f"{doc}: {path}") for doc, path in sorted(set(named_paths()))])
def test_every_named_path_exists(doc, path):
    assert (ROOT / path).exists(), f"{doc} names {path}, which is not in the repository"


def sasa_argv(command: str) -> list[str]:
    """The `sasa` arguments a command line runs; an sbatch line runs `sasa fit --config <config> <rest>`."""
    words = shlex.split(command)
    if words[0] == "sasa":
        return words[1:]
    script = next(i for i, word in enumerate(words) if word.startswith("slurm/"))
    assert (ROOT / words[script]).is_file(), words[script]
    rest = words[script + 1 :]
    if words[script].endswith("ablation_array.sbatch"):
        rest = ["--config", str(sorted((ROOT / "configs/ablations").glob("*.yaml"))[0]), *rest]
    else:
        rest = ["--config", *rest]
    return ["fit", *rest]


@pytest.mark.parametrize("command", list(documented_commands()))
def test_every_documented_command_parses(command, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = sasa_argv(command)
    if argv[0] in TRAINER_COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--print_config"])
        assert exit_.value.code in (0, None), capsys.readouterr().err[-2000:]
        assert "class_path: sasa_lightning.tasks." in capsys.readouterr().out
    else:
        tools_parser().parse_args(argv)


def test_the_docs_show_commands():
    """The extraction itself: it finds the README's and the sbatch scripts' commands."""
    commands = [c for doc in DOCS for c in command_lines(doc)]
    assert sum(c.startswith("sbatch ") for c in commands) >= 6 and sum(c.startswith("sasa fit") for c in commands) >= 5
    assert any("--predictions.draw true" in c for c in commands)  # a continued line, joined


def test_listed_models_and_backends_are_the_code_s():
    from sasa_lightning.models import list_models
    from sasa_lightning.nn.functional import BACKEND_NAMES

    readme = (ROOT / "README.md").read_text()
    listed = re.search(r"list_models\(\)\s+# (\[[^\]]*\])", readme, re.S).group(1)
    assert re.findall(r"'(\w+)'", listed) == list_models()
    options = re.search(r"`backend` = (.*?)\n\(", readme, re.S).group(1)
    assert re.findall(r"`(\w+)`", options) == list(BACKEND_NAMES)


def documented_options():
    """(doc, section, option) for every `--section.option` the docs name, commands or prose."""
    for doc in DOCS:
        for section, option in re.findall(r"--(model\.init_args|data\.init_args|trainer|[a-z_]+)\.(\w+)", doc_text(doc)):
            yield doc.relative_to(ROOT), section, option


def option_names(section: str) -> set[str]:
    """What the CLI accepts after --<section>.: the tasks', data modules' or trainer's constructor
    arguments, or a default callback's."""
    import inspect

    import lightning as L

    from sasa_lightning import data, tasks
    from sasa_lightning.cli.lightning_cli import DEFAULT_CALLBACKS

    def arguments(classes) -> set[str]:
        return {name for cls in classes for klass in cls.__mro__ if "__init__" in vars(klass)
                for name in inspect.signature(klass.__init__).parameters}

    if section == "model.init_args":
        return arguments(tasks.TASKS)
    if section == "data.init_args":
        return arguments([data.FFCVImageNet, data.DigitsData, data.ImageFolderData, data.COCODetectionData])
    if section == "trainer":
        return set(inspect.signature(L.Trainer.__init__).parameters)
    return arguments([DEFAULT_CALLBACKS[section][0]]) if section in DEFAULT_CALLBACKS else set()


def test_every_documented_option_is_one_the_cli_takes():
    wrong = [f"{doc}: --{section}.{option}" for doc, section, option in sorted(set(documented_options()))
             if option not in option_names(section)]
    assert wrong == []
    assert len(set(documented_options())) >= 20  # the extraction finds them


def test_every_relative_link_and_its_anchor_exist():
    def anchors(path: Path) -> set[str]:
        return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                for line in path.read_text().splitlines() if line.startswith("#")}

    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc_text(doc)):
            if target.startswith(("http://", "https://")):
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists() or (anchor and anchor not in anchors(path)):
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert broken == []


def test_make_check_leaves_out_every_mark_of_the_long_tests():
    """`make check`, the contributors' loop README names: every test but those of the marks
    pyproject.toml declares for long ones (all of its marks but requires_cuda, which skips itself)."""
    import subprocess
    import tomllib

    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    long_marks = {marker.split(":")[0] for marker in markers} - {"requires_cuda"}
    dry_run = subprocess.run(["make", "-n", "check"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    expression = re.search(r'-m pytest -m "([^"]+)"', dry_run).group(1)
    assert expression.split(" and ") == [f"not {mark}" for mark in ("slow", "inductor", "slurm")]
    assert set(re.findall(r"not (\w+)", expression)) == long_marks
    assert "`make check`" in (ROOT / "README.md").read_text()
