"""The README and docs/API.md: what a user's own clone needs, and names that exist."""

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_points_inside_the_repository_and_names_the_port_and_occlusion():
    readme = (ROOT / "README.md").read_text()
    assert "../shared" not in readme and "shared/API.md" not in readme
    assert "docs/API.md" in readme and (ROOT / "docs" / "API.md").exists()
    assert "PORT" in readme
    assert "Occlusion" in readme


def _resolve(dotted: str):
    """The module or attribute a dotted name such as ``core.runs.jobs.start_run`` names."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        for name in parts[k:]:
            found = getattr(found, name)
        return found
    raise ModuleNotFoundError(dotted)


def test_every_function_the_api_guide_lists_under_a_module_exists():
    guide = (ROOT / "docs" / "API.md").read_text()
    checked = 0
    for section in re.split(r"^## ", guide, flags=re.M)[1:]:
        heading = section.splitlines()[0].strip()
        if not re.fullmatch(r"core(\.\w+)+", heading):
            continue
        module = importlib.import_module(heading)
        for name in re.findall(r"^- `(\w+)[(`]", section, flags=re.M):
            assert hasattr(module, name), f"{heading}.{name} is in docs/API.md but not in the code"
            checked += 1
    assert checked >= 10


def test_every_dotted_name_the_api_guide_gives_exists():
    """``core.runs.jobs.start_run``, ``core.data.limits``: each name the guide spells out is where it says."""
    guide = (ROOT / "docs" / "API.md").read_text()
    names = set(re.findall(r"`(core(?:\.\w+)+)", guide))
    assert len(names) >= 30
    for dotted in sorted(names):
        try:
            _resolve(dotted)
        except (ModuleNotFoundError, AttributeError):
            raise AssertionError(f"docs/API.md names {dotted}, which does not exist") from None


def _readme_commands() -> list[list[str]]:
    """Each ``python -m core.cli`` / ``torchrun … -m core.cli`` line of the README's bash blocks, as
    the arguments after ``core.cli``."""
    import shlex

    readme = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if "-m core.cli" in line:
                commands.append(shlex.split(line.split("-m core.cli", 1)[1]))
    return commands


def test_the_readmes_command_lines_parse_and_every_file_they_name_is_in_a_fresh_clone():
    from core import cli
    from core.models import backbones

    commands = _readme_commands()
    assert len(commands) >= 6
    for args in commands:
        parsed = cli.parser().parse_args(args)  # an unknown or missing argument exits here
        if parsed.command != "train":
            continue
        assert parsed.data.startswith("demo:") or parsed.data == "my-photos.zip", parsed.data
        if parsed.config:  # a settings file the repository has, which fits the preset and backbone
            assert (ROOT / parsed.config).is_file(), f"the README names {parsed.config}, which a clone lacks"
            cli.read_config(str(ROOT / parsed.config), backbones.group_names(parsed.backbone), parsed.strategy)
    # the first lines need nothing but the clone: the demo set, the bundled backbone and shipped files
    first = [a for a in commands if "my-photos.zip" not in a and "RUN_ID" not in a]
    assert [a[0] for a in first[:4]] == ["train", "train", "list", "export"]
