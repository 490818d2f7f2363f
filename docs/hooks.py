"""mkdocs hooks: the installed package layout for mkdocstrings, and the public API's reference.

1. The repository keeps the four packages in their own top-level folders (data_pipeline/,
   models/, forecast/, verification/) and installs them as wxens.data_pipeline, ...
   (setuptools' package-dir). mkdocstrings reads source files, not the import system, so
   before each build `on_config` assembles out/docs-src/wxens/: links to every entry of wxens/
   plus the four folders under their installed names. mkdocs.yml points mkdocstrings' `paths`
   at out/docs-src.
2. `wxens/__init__.py` maps each public name to the module that defines it (`_EXPORTS`).
   `on_page_markdown` replaces the `<!-- public-api -->` line of reference/index.md with one
   mkdocstrings block per public name, grouped by package, so the reference lists exactly the
   names `import wxens` offers.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from mkdocs.plugins import event_priority

PACKAGES = {
    "data_pipeline": "The truth world and analyses",
    "models": "Members",
    "forecast": "Ensembles",
    "verification": "Verification",
}
SOURCE_TREE = Path("out", "docs-src")
PLACEHOLDER = "<!-- public-api -->"
ROOT: list[Path] = []


@event_priority(100)  # before mkdocstrings reads its handler paths
def on_config(config):
    root = Path(config.config_file_path).resolve().parent
    ROOT[:] = [root]
    package = root / SOURCE_TREE / "wxens"
    if package.exists():
        shutil.rmtree(package)
    package.mkdir(parents=True)
    for entry in (root / "wxens").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name in PACKAGES:
        (package / name).symlink_to(root / name, target_is_directory=True)
    return config


def public_names(init: Path) -> dict[str, str]:
    """`_EXPORTS` of wxens/__init__.py (name -> defining module), read without importing."""
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets):
            exports = ast.literal_eval(node.value)
            return {str(name): str(module) for name, module in exports.items()}
    return {}


def api_blocks(exports: dict[str, str]) -> str:
    groups: dict[str, list[str]] = {title: [] for title in (*PACKAGES.values(), "Other")}
    for name, module in exports.items():
        package = module.split(".")[1] if module.count(".") else ""
        groups[PACKAGES.get(package, "Other")].append(name)
    lines = []
    for title, names in groups.items():
        if names:
            lines += [f"## {title}", ""]
            for name in names:
                lines += [
                    f"::: {exports[name]}.{name}",
                    "    options:",
                    "      show_root_full_path: false",
                    "      heading_level: 3",
                    "",
                ]
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
    if PLACEHOLDER not in markdown or not ROOT:
        return markdown
    exports = public_names(ROOT[0] / "wxens" / "__init__.py")
    return markdown.replace(PLACEHOLDER, api_blocks(exports))
