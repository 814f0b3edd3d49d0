"""Small budgets for the documented commands, injected where argparse reads them (for
tests/test_doc_commands.py; never part of the product).

With this folder on PYTHONPATH and NAS_DOC_LIMITS="budget=5,epochs=1,size=32x64,...", every
`python -m nas.*` command (a parser whose prog starts with "python -m nas.") runs with each named flag
at most its limit: the value the command gives, or the flag's default, is capped (a size HxW per
dimension); a flag left unset (None) stays unset. So the docs' commands run exactly as written, only
smaller. Each command a limit changed says so in one stderr line, which the test checks. Python
imports this module at start-up in every process, Ray's workers too: it only wraps argparse.
"""
import os

ENV = "NAS_DOC_LIMITS"
PROG = "python -m nas."


def _capped(value, limit: str):
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return min(value, type(value)(limit))
    if isinstance(value, str) and "x" in value and "x" in limit:
        dims = [min(int(v), int(c)) for v, c in zip(value.lower().split("x"), limit.split("x"))]
        return "x".join(map(str, dims))
    return value


def _protocol_default(namespace, dest: str):
    """What an unset --size, --epochs, --val-size or --val-epochs means: the --protocol's value."""
    name = getattr(namespace, "protocol", None)
    if name is None or dest not in ("size", "epochs", "val_size", "val_epochs"):
        return None
    from nas.protocols import PROTOCOLS

    value = getattr(PROTOCOLS[name], dest)
    return "x".join(map(str, value)) if isinstance(value, tuple) else value


def _cap(parser, namespace, limits: dict) -> list[str]:
    changed = []
    for flag, limit in limits.items():
        action = parser._option_string_actions.get(f"--{flag}")
        value = getattr(namespace, action.dest, None) if action is not None else None
        if value is None and action is not None:  # left to the protocol: capped as the protocol sets it
            value = _protocol_default(namespace, action.dest)
        if value is None:
            continue
        capped = _capped(value, limit)
        if capped != value:
            setattr(namespace, action.dest, capped)
            changed.append(f"--{flag} {value} -> {capped}")
    return changed


def _install(spec: str) -> None:
    import argparse
    import sys

    limits = dict(item.split("=", 1) for item in spec.split(",") if item)
    parse_known_args = argparse.ArgumentParser.parse_known_args

    def capped_parse_known_args(self, args=None, namespace=None):
        namespace, extras = parse_known_args(self, args, namespace)
        if (self.prog or "").startswith(PROG):
            changed = _cap(self, namespace, limits)
            if changed:
                print(f"doc limits: {', '.join(changed)}", file=sys.stderr, flush=True)
        return namespace, extras

    argparse.ArgumentParser.parse_known_args = capped_parse_known_args


if os.environ.get(ENV):
    _install(os.environ[ENV])
