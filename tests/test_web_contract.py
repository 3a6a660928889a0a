"""The front-end (web/densegrpo.js, web/densegrpo.css) spells the websocket event, the job states and the job
file names exactly as nodes/web_contract.py defines them, and loads its stylesheet from a file."""

import re
from pathlib import Path

import pytest

from densegrpo_core.jobs.state import JobState
from nodes import job_service, routes, web_contract

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "web" / "densegrpo.js"
CSS = ROOT / "web" / "densegrpo.css"


def _strings(text: str) -> list[str]:
    return re.findall(r'"([^"\\]*)"', text)


def _const(js: str, name: str) -> str:
    """The right-hand side of `const NAME = ...;` (one line)."""
    m = re.search(rf"^const {name} = (.+?);", js, re.M)
    assert m, f"web/densegrpo.js defines no const {name}"
    return m.group(1)


def contract_problems(js: str, css: str) -> list[str]:
    """Every way the JS/CSS differ from nodes/web_contract.py (empty when they agree)."""
    problems = []

    def check(what, got, want):
        if got != want:
            problems.append(f"{what}: JS has {got!r}, Python {want!r}")

    check("EVENT", _strings(_const(js, "EVENT")), [web_contract.EVENT])
    if "api.addEventListener(EVENT," not in js:
        problems.append("the websocket listener does not use EVENT")
    check("JOB_STATES", _strings(_const(js, "JOB_STATES")), list(web_contract.JOB_STATES))
    check("TERMINAL", sorted(_strings(_const(js, "TERMINAL"))), sorted(web_contract.TERMINAL_STATES))
    check("ACTIVE", sorted(_strings(_const(js, "ACTIVE"))), sorted(web_contract.ACTIVE_STATES))
    check("JOB_FILES", _strings(_const(js, "JOB_FILES")), list(web_contract.JOB_FILES))
    # no stray copy elsewhere: every file name and every state the JS compares with is a known one
    for name in sorted({s for s in _strings(js) if s.endswith(".png")} - set(web_contract.JOB_FILES)):
        problems.append(f"JS names job file {name!r}, not in JOB_FILES")
    for state in re.findall(r'\.state\s*[!=]==?\s*"([^"]*)"', js):
        if state not in web_contract.JOB_STATES:
            problems.append(f"JS compares a job state with {state!r}, not in JOB_STATES")
    # the stylesheet: one class per state, no class for an unknown state
    css_states = set(re.findall(r"\.state-([a-z_]+)\s*\{", css))
    for state in sorted(set(web_contract.JOB_STATES) - css_states):
        problems.append(f"CSS has no .state-{state} rule")
    for state in sorted(css_states - set(web_contract.JOB_STATES)):
        problems.append(f"CSS styles unknown state .state-{state}")
    return problems


def test_python_side_uses_the_contract():
    assert web_contract.JOB_STATES == tuple(s.value for s in JobState)
    assert set(web_contract.TERMINAL_STATES) | set(web_contract.ACTIVE_STATES) == set(web_contract.JOB_STATES)
    assert job_service.EVENT is web_contract.EVENT
    assert routes.JOB_FILES is web_contract.JOB_FILES
    # the job folder's files the routes serve are the ones the core's training work writes
    work = (ROOT / "densegrpo_core" / "jobs" / "training_work.py").read_text()
    assert all(f'"{name}"' in work for name in web_contract.JOB_FILES)


def test_js_and_css_use_exactly_the_python_names():
    assert contract_problems(JS.read_text(encoding="utf-8"), CSS.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ('const EVENT = "densegrpo.job"', 'const EVENT = "densegrpo.jobs"', "EVENT"),
        ('"stopping", "finished"', '"finished"', "JOB_STATES"),
        ('["finished", "stopped", "failed"]', '["finished", "failed"]', "TERMINAL"),
        ('"samples.png"]', '"sample.png"]', "JOB_FILES"),
        ('["samples.png", "latest samples"]', '["samples.jpg.png", "latest samples"]', "samples.jpg.png"),
        ('job.state === "stopped"', 'job.state === "cancelled"', "cancelled"),
    ],
)
def test_a_mismatch_in_the_js_is_reported(old, new, expected):
    js, css = JS.read_text(encoding="utf-8"), CSS.read_text(encoding="utf-8")
    assert old in js
    problems = contract_problems(js.replace(old, new, 1), css)
    assert problems and any(expected in p for p in problems), problems


def test_a_missing_or_unknown_state_style_is_reported():
    js, css = JS.read_text(encoding="utf-8"), CSS.read_text(encoding="utf-8")
    assert any("CSS has no .state-failed" in p for p in contract_problems(js, css.replace(".state-failed{", ".x{")))
    assert any(".state-paused" in p for p in contract_problems(js, css + "\n.state-paused{color:red}\n"))


def test_the_stylesheet_is_a_file_linked_once_from_the_extension():
    js = JS.read_text(encoding="utf-8")
    assert CSS.is_file() and ".densegrpo-panel{" in CSS.read_text(encoding="utf-8")
    # no CSS carried in a string, no <style> element
    assert not re.search(r"\.densegrpo-[\w-]+\s*\{", js) and 'el("style"' not in js
    link = re.search(r'el\("link", \{ id: "densegrpo-style", rel: "stylesheet", href: ([^}]+)\}', js)
    assert link and 'new URL("./densegrpo.css", import.meta.url).href' in link.group(1)
    guard = r'function injectStyle\(\) \{\n\s*if \(document\.getElementById\("densegrpo-style"\)\) return;'
    guard = re.search(guard, js)
    assert guard, "injectStyle must add the stylesheet once (guarded by its id)"
    # every panel class the stylesheet styles is one the extension uses
    classes = set(re.findall(r"\.(densegrpo-[\w-]+)", CSS.read_text(encoding="utf-8")))
    assert classes and all(c in js for c in classes), sorted(c for c in classes if c not in js)
