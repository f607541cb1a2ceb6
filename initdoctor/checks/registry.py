"""The rules' registry: every check that can warn, fail or skip a finding, under a stable code.

A rule is data (:class:`Rule`: code, kebab-case name, severities, message templates, a doc of
what it measures, why, the formula or citation it applies and how to silence it); the function
that applies it lives in the module of its family and calls :func:`flag` (or :func:`mark_skip`).
Codes (:data:`FAMILIES`) and ignoring by code (:data:`IGNORING`) are described below and in
docs/rules.md, which :meth:`Registry.markdown` generates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import SettingsError
from ..report import Status, rank

CODE = re.compile(r"^[A-Z]+[0-9]+$")
_FULL_CODE = re.compile(r"^[A-Z][0-9]{3}$")
_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
#: Codes are ruff-like: one letter per family, then three digits (the family's digit first).
FAMILIES = {
    "S": "S0xx: not judged (status skip): integer or empty weights, embeddings, layer-name globs",
    "K": "K1xx: static, per layer: the weights against Kaiming (He et al. 2015)",
    "P": "P2xx: measured by the probe: what the signal did",
    "R": "R3xx: residual blocks: the residual stream's growth",
    "N": "N4xx: normalization layers' affine parameters",
    "C": "C5xx: the chain of hidden layers: compounding over depth",
}

IGNORING = """\
An `ignore` entry (`--ignore`, `[tool.initdoctor] ignore`, `Settings.ignore`) matching `^[A-Z]+[0-9]+$` is a
rule code: it selects every rule whose code starts with it, so `K101` selects one rule and `K1`
the whole K1xx family (a prefix needs at least one digit: a bare letter is a layer-name glob).
An ignored rule is not applied: its finding does not raise the layer's or the summary's status,
and the message ends with `; CODE (name) ignored by configuration`. Only rules that can warn or
fail can be ignored; an entry selecting none of them (an unknown code, or only S0xx rules) is an
error. Every other entry is a layer-name glob: matching layers are not judged (status `skip`,
"ignored by configuration", rule S004).
"""


@dataclass(frozen=True, eq=False)
class Rule:
    """One check. ``messages`` are :meth:`str.format` templates, ``"default"`` the main one."""

    code: str
    name: str
    severities: tuple[Status, ...]
    applies_to: str  # what it judges: "layer", "norm layer", "residual block", "model"
    title: str  # one line
    what: str  # what it measures
    why: str  # why it matters
    formula: str  # the formula or citation it applies
    silence: str  # how to silence it (besides ignoring the code)
    messages: Mapping[str, str]

    @property
    def ignorable(self) -> bool:
        """Rules that can warn or fail can be ignored by code; ``skip`` rules cannot."""
        return any(s in (Status.WARN, Status.ERROR) for s in self.severities)

    def message(self, key: str = "default", **values: Any) -> str:
        return self.messages[key].format(**values)

    def doc(self) -> str:
        """The rule's documentation, Markdown (``initdoctor rule CODE``, docs/rules.md)."""
        silence = self.silence
        if self.ignorable:
            silence += f' Or ignore the rule: `ignore = ["{self.code}"]` in `[tool.initdoctor]`.'
        templates = "\n".join(f"    {t}" for t in self.messages.values())
        return (
            f"### {self.code} `{self.name}`\n\n{self.title}\n\n"
            f"- **Severity:** {', '.join(self.severities)}\n"
            f"- **Applies to:** {self.applies_to}\n\n"
            f"**What it measures.** {self.what}\n\n"
            f"**Why.** {self.why}\n\n"
            f"**Formula.** {self.formula}\n\n"
            f"**How to silence it.** {silence}\n\n"
            f"**Message.**\n\n{templates}\n"
        )


class Finding(Protocol):
    status: Status
    message: str
    rule: str | None


def ignored_note(rule: Rule) -> str:
    return f"; {rule.code} ({rule.name}) ignored by configuration"


def flag(finding: Finding, rule: Rule, status: Status, ignored: frozenset[str]) -> bool:
    """Apply ``rule`` to ``finding`` (whose message the caller has already written): raise its
    status to ``status``, recording the rule's code when it raises it. An ignored rule leaves
    the status alone and says so at the end of the message. True when the rule was applied."""
    if rule.code in ignored:
        finding.message += ignored_note(rule)
        return False
    if rank(status) > rank(finding.status):
        finding.status, finding.rule = status, rule.code
    return True


def mark_skip(finding: Finding, rule: Rule, message: str) -> None:
    """A ``skip`` rule: the finding is not judged."""
    finding.status, finding.rule, finding.message = Status.SKIP, rule.code, message


class Registry:
    """The registered rules, by code."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self._rules: dict[str, Rule] = {}
        for r in rules:
            if not _FULL_CODE.match(r.code) or r.code[0] not in FAMILIES:
                raise ValueError(f"rule code {r.code!r}: one family letter ({''.join(FAMILIES)}), 3 digits")
            if r.code in self._rules or any(o.name == r.name for o in self._rules.values()):
                raise ValueError(f"rule {r.code} {r.name}: code or name registered twice")
            if not _NAME.match(r.name):
                raise ValueError(f"rule {r.code}: name {r.name!r} is not kebab-case")
            self._rules[r.code] = r
        order = list(FAMILIES)  # by family (S, K, P, R, N, C), then code
        self._rules = dict(sorted(self._rules.items(), key=lambda kv: (order.index(kv[0][0]), kv[0])))

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules.values())

    def __len__(self) -> int:
        return len(self._rules)

    def get(self, code: str) -> Rule | None:
        return self._rules.get(code.upper())

    def ignored(self, entries: Iterable[str]) -> frozenset[str]:
        """The codes the ``ignore`` entries select (see the module docstring); globs are left out.
        An entry that looks like a code but selects no ignorable rule is a :class:`SettingsError`."""
        codes: set[str] = set()
        for entry in entries:
            if not CODE.match(entry):
                continue
            selected = [r for r in self if r.code.startswith(entry)]
            if not selected:
                raise SettingsError(
                    f"ignore {entry!r}: no rule has this code; `initdoctor rule --all` lists them"
                )
            ignorable = [r.code for r in selected if r.ignorable]
            if not ignorable:
                raise SettingsError(
                    f"ignore {entry!r}: {', '.join(r.code for r in selected)} only mark layers not "
                    "judged and cannot be ignored; use a layer-name glob"
                )
            codes.update(ignorable)
        return frozenset(codes)

    def listing(self) -> str:
        """One line per rule: code, name, severities, title (``initdoctor rule --all``)."""
        width = max(len(r.name) for r in self)
        return "".join(
            f"{r.code}  {r.name:<{width}}  {'/'.join(r.severities):<10}  {r.title}\n" for r in self
        )

    def markdown(self, sections: Mapping[str, str] | None = None) -> str:
        """docs/rules.md, generated from the registry; ``sections``: title → Markdown, placed
        before the rules (the verdict's precedence)."""
        parts = [
            "# initdoctor rules\n\n",
            "<!-- generated by initdoctor.checks.rules_markdown(); do not edit by hand -->\n\n",
            "Every check that can warn, fail or skip a finding has a stable code; a finding's `rule`\n",
            "(JSON) names the rule that set its status. Show one rule with `initdoctor rule CODE`,\n",
            "all of them with `initdoctor rule --all`.\n\n",
            "Families:\n\n",
            *(f"- {text}\n" for text in FAMILIES.values()),
            "\n## Ignoring rules\n\n",
            IGNORING,
            *(f"\n## {title}\n\n{text.strip()}\n" for title, text in (sections or {}).items()),
            "\n## Rules\n\n",
            "| code | name | severity | what |\n|---|---|---|---|\n",
            *(f"| {r.code} | `{r.name}` | {', '.join(r.severities)} | {r.title} |\n" for r in self),
        ]
        parts += ["\n" + r.doc() for r in self]
        return "".join(parts)
