"""The documentation holds together: README.md and docs/*.md link only to files and headings that
exist, and docs/configuration.md documents exactly the keys the plugin reads.

- Links: every ``[text](target)`` outside code; a relative target must exist, and a ``#anchor`` must
  be the slug of a heading of the target file, as GitHub makes it (lowercase, punctuation other than
  hyphens and underscores dropped, spaces to hyphens, ``-1``, ``-2``... for repeats).
- Keys: every key in the first column of a table of docs/configuration.md is given to the real
  strict check (:func:`lavis_listwise.config_check.check_config`) on a shipped project YAML, as
  ``--options key=null``; the check must not call it unknown. The other way round, every key the
  plugin reads must be documented: ``model.listwise.*`` and ``model.listwise.relevance.*`` as the
  strict check lists them when it refuses a key there, the plugin's ``run.*`` keys as those its own
  modules read and LAVIS's do not, each arch's ``model.*`` keys as those its ``from_config`` reads
  and the LAVIS class it extends does not (both from the check's generated table,
  :func:`~lavis_listwise.config_check.key_table`), and the ``demo.*`` keys.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
README = ROOT / "README.md"

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:.+?)\1")
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(?P<text>.+?)\s*#*\s*$")
KEY_CELL = re.compile(r"^`(?P<key>(?:model|run|demo|datasets)(?:\.\w+)+)`$")


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(text: str):
    """``(line number, line)`` of a Markdown text outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading's text."""
    text = LINK.sub(lambda m: m.group("text"), heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeats numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group("text"))
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def broken_links(path: Path) -> list[str]:
    """``file:line: target: why`` for every relative link of ``path`` that does not resolve."""
    problems = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            target = match.group("target")
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            file_part, _, anchor = target.partition("#")
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{number}"
            resolved = (path.parent / file_part).resolve() if file_part else path
            if not resolved.exists():
                problems.append(f"{where}: {target}: {file_part} does not exist")
                continue
            if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{where}: {target}: no heading #{anchor} in {resolved.name}")
            elif anchor and resolved.suffix != ".md":
                problems.append(f"{where}: {target}: an anchor into a file that is not Markdown")
    return problems


# ----------------------------------------------------------------------------- links
def test_github_slug():
    assert github_slug("What pip reports on the 3.12 / 3.13 stack, and why it is expected") == (
        "what-pip-reports-on-the-312--313-stack-and-why-it-is-expected"
    )
    assert github_slug("`run` keys the plugin reads") == "run-keys-the-plugin-reads"
    assert github_slug("Smooth-NDCG forward + backward") == "smooth-ndcg-forward--backward"
    assert (
        github_slug("What the `retrieval_listwise` task reports")
        == "what-the-retrieval_listwise-task-reports"
    )
    assert github_slug("Loading the models with LAVIS's API") == "loading-the-models-with-laviss-api"


def test_link_checker_finds_broken_links(tmp_path):
    """The checker itself fails on a missing file, a missing heading and a repeated heading's anchor
    numbered past its repeats, and accepts what exists; a link inside code is not a link."""
    (tmp_path / "other.md").write_text("# Title\n\n## Part\n\n## Part\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#part-1) [ok](#page) [ok](other.md) [web](https://example.com/x#y)\n"
        "[gone](missing.md) [no heading](other.md#nothing) [too far](other.md#part-2)\n"
        "`[in code](missing.md)`\n\n```md\n[in a block](missing.md)\n# not a heading\n```\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert "missing.md does not exist" in problems[0]
    assert "no heading #nothing" in problems[1]
    assert "no heading #part-2" in problems[2]
    assert "not-a-heading" not in anchors(page)


def test_every_link_resolves():
    files = doc_files()
    assert len(files) >= 10, files  # the README and the docs pages, not an empty glob
    problems = [p for path in files for p in broken_links(path)]
    assert not problems, "\n".join(problems)


def test_docs_index_lists_every_page():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    listed = {m.group("target").partition("#")[0] for m in LINK.finditer(index)}
    pages = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    assert pages <= listed, f"docs/README.md does not link {sorted(pages - listed)}"


def test_readme_opens_with_the_two_commands_and_stays_short():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[:3] == ["# lavis-listwise", "", "```bash"], lines[:3]
    assert lines[3].startswith("bash scripts/run.sh demo ")
    assert lines[4].startswith("bash scripts/run.sh test ")
    assert lines[5] == "```"
    assert len(text.encode("utf-8")) <= 12 * 1024, "README.md is over 12 KB: move detail to docs/"


def test_headings_are_nested():
    """One title per page, and no heading deeper than one level below the one before it."""
    problems = []
    for path in doc_files():
        levels = [
            len(m.group(1))
            for _, line in prose_lines(path.read_text(encoding="utf-8"))
            if (m := HEADING.match(line))
        ]
        if levels[:1] != [1] or levels.count(1) != 1:
            problems.append(f"{path.name}: needs exactly one '# ' title first, has levels {levels}")
        problems += [
            f"{path.name}: heading level {b} right after level {a}"
            for a, b in zip(levels, levels[1:])
            if b > a + 1
        ]
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- configuration keys
def documented_keys() -> dict[str, str]:
    """The keys in the first column of docs/configuration.md's tables, with the row's ``archs`` cell
    (empty when the table has no such column)."""
    keys: dict[str, str] = {}
    header: list[str] = []
    for _, line in prose_lines(CONFIGURATION.read_text(encoding="utf-8")):
        if not line.startswith("|"):
            header = []
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not header:
            header = [c.lower() for c in cells]
            continue
        match = KEY_CELL.match(cells[0])
        if match:
            assert match.group("key") not in keys, f"{match.group('key')} is documented twice"
            keys[match.group("key")] = cells[header.index("archs")] if "archs" in header else ""
    return keys


@cache
def project_yamls() -> dict[str, Path]:
    """A shipped project YAML for each arch (the first in name order), and ``"demo"``: one with a
    ``demo`` section."""
    from lavis_listwise.resources import data_dir

    out: dict[str, Path] = {}
    for path in sorted(Path(data_dir("projects")).rglob("*.yaml")):
        cfg = OmegaConf.load(path)
        out.setdefault(str(OmegaConf.select(cfg, "model.arch")), path)
        if "demo" in cfg:
            out.setdefault("demo", path)
    return out


def strict_check_error(yaml: Path, options: list[str]) -> str:
    """The message of the real strict check on a project YAML plus ``--options``, or ``""``."""
    from lavis_listwise.config_check import check_config
    from listwise_ranking.errors import ConfigError

    try:
        check_config(OmegaConf.load(yaml), options)
    except ConfigError as err:
        return str(err)
    return ""


def arch_names(cell: str) -> list[str]:
    """``BLIP, ALBEF, CLIP, BLIP-2`` -> the registered archs (``blip2_retrieval_listwise`` ...)."""
    return [
        f"{name.strip().lower().replace('-', '')}_retrieval_listwise"
        for name in cell.split(",")
        if name.strip()
    ]


def allowed_by_check(section: str) -> set[str]:
    """The keys the strict check allows under ``section``, as it lists them when it refuses a key there."""
    message = strict_check_error(project_yamls()["demo"], [f"{section}.undocumented_probe=1"])
    match = re.search(r"unknown key\(s\) \['undocumented_probe'\]; allowed: (\[.*?\])", message)
    assert match, f"the strict check did not refuse {section}.undocumented_probe: {message!r}"
    return set(ast.literal_eval(match.group(1)))


def plugin_run_keys() -> set[str]:
    """``run`` keys the plugin's own modules read and LAVIS's do not."""
    from lavis_listwise.config_check import key_table

    run = key_table()["run"]
    return set(run["lavis_listwise"]) - set(run["lavis"])


def plugin_model_keys(arch: str) -> set[str]:
    """``model`` keys ``arch`` reads and the LAVIS class it extends does not."""
    from lavis_listwise.config_check import key_table

    entry = key_table()["model"][arch]
    return set(entry["keys"]) - set(entry["lavis_keys"])


def test_configuration_page_documents_every_section():
    keys = documented_keys()
    for prefix in ("model.listwise.", "model.listwise.relevance.", "run.", "demo."):
        assert any(k.startswith(prefix) for k in keys), f"no {prefix}* key found in {CONFIGURATION.name}"


def test_every_documented_key_is_accepted_by_the_strict_check():
    import lavis_listwise  # noqa: F401
    from lavis_listwise.config_check import plugin_archs

    yamls = project_yamls()
    archs = plugin_archs()
    for arch in archs:
        assert arch in yamls, f"no shipped project YAML uses {arch}"
        assert strict_check_error(yamls[arch], []) == "", yamls[arch]
        # the check is not vacuous: a key nothing reads is refused in every section probed below
        for probe in (
            "run.undocumented_probe",
            "model.undocumented_probe",
            "model.listwise.undocumented_probe",
        ):
            assert "unknown key" in strict_check_error(yamls[arch], [f"{probe}=1"]), (arch, probe)
    assert "unknown key" in strict_check_error(yamls["demo"], ["demo.undocumented_probe=1"])

    refused = []
    for key, arch_cell in documented_keys().items():
        if key.startswith("demo."):
            targets = ["demo"]
        elif key.startswith("model."):
            targets = arch_names(arch_cell) if arch_cell else archs
            unknown_archs = sorted(set(targets) - set(archs))
            assert not unknown_archs, f"{key}: the archs column names {unknown_archs}, not plugin archs"
        else:
            targets = [archs[0]]
        for target in targets:
            message = strict_check_error(yamls[target], [f"{key}=null"])
            if "unknown key" in message:
                refused.append(f"{key} ({target}): {message}")
    assert not refused, "documented keys the strict check refuses:\n" + "\n".join(refused)


def test_every_plugin_key_is_documented():
    import lavis_listwise  # noqa: F401
    from lavis_listwise.config_check import plugin_archs, valid_demo_keys

    keys = documented_keys()
    missing = []
    for section in ("model.listwise", "model.listwise.relevance"):
        missing += [
            f"{section}.{k}" for k in sorted(allowed_by_check(section)) if f"{section}.{k}" not in keys
        ]
    missing += [f"run.{k}" for k in sorted(plugin_run_keys()) if f"run.{k}" not in keys]
    missing += [f"demo.{k}" for k in sorted(valid_demo_keys()) if f"demo.{k}" not in keys]
    for arch in plugin_archs():
        for k in sorted(plugin_model_keys(arch)):
            key = f"model.{k}"
            if key not in keys:
                missing.append(key)
            elif keys[key] and arch not in arch_names(keys[key]):
                missing.append(f"{key} (its archs column leaves out {arch})")
    assert not missing, f"keys the plugin reads that {CONFIGURATION.name} does not document: {missing}"


def test_plugin_key_derivation_is_not_empty():
    """The reverse check has something to check: the derivations find the plugin's keys."""
    assert {"weight", "tau"} <= allowed_by_check("model.listwise")
    assert {"floor", "encoder"} <= allowed_by_check("model.listwise.relevance")
    assert {"overwrite_output", "gt_relevance", "itm_eval", "coco_1k"} <= plugin_run_keys()
    assert "max_epoch" not in plugin_run_keys()  # LAVIS's own key, read by LAVIS's runner
    assert {"text_pooling", "listwise"} <= plugin_model_keys("blip_retrieval_listwise")
