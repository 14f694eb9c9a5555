"""Alias moves: promote, rollback, and their history, as compare-and-set.

MLflow has no compare-and-set on aliases, so p2p builds one:

1. A lock per model: the registered model `<name>.p2p-alias-lock`. Creating a registered
   model is atomic in every MLflow store (a unique name), so exactly one p2p writer holds it;
   it is deleted on release, and a lock older than LOCK_TTL_S (a crashed holder) is broken.
2. Under the lock the champion is re-read and compared with what the decision was made
   against (`expect`); if it changed, nothing moves and `ChampionChanged` says so.
3. After the alias is set it is read again: a writer outside p2p (the MLflow UI, another
   tool) that moved it in between is reported, never silently overwritten.

Remaining window: writers that do not use p2p (they do not take the lock) can still move an
alias between step 2's read and step 3's set (milliseconds); step 3 detects a move that lands
before its re-read, and the history records what p2p did. A lock broken as stale while its
holder is still alive (a holder stalled for > LOCK_TTL_S) lets two p2p writers in at once.

Every alias move p2p makes is appended to the registered model's `p2p.alias_log`; champion
moves also go on the `p2p.champion_history` stack that `rollback` walks back, and rollbacks
to `p2p.rollbacks`. All three are JSON tags on the registered model, written under the lock.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from typing import Any

from p2p.registry.versions import (
    CHALLENGER,
    CHAMPION,
    ModelVersionInfo,
    RegistryError,
    alias_version,
    client,
    get_version,
    mlflow_errors,
    mlflow_timeout_s,
    now,
    short,
)

HISTORY_TAG, ROLLBACK_TAG = "p2p.champion_history", "p2p.rollbacks"
ALIAS_LOG_TAG = "p2p.alias_log"
HISTORY_MAX = 200  # entries kept per tag (registry tag values may hold 100k characters)
LOCK_SUFFIX = ".p2p-alias-lock"
LOCK_TTL_S = 60.0  # a lock held longer than this is a crashed holder's: broken
ANY = object()  # `expect` for a move that replaces whatever champion there is


class ChampionChanged(RegistryError):
    """The champion is not the one a decision was made against: nothing was moved."""


def is_lock(model_name: str) -> bool:
    return model_name.endswith(LOCK_SUFFIX)


def read_log(tags: dict[str, str], tag: str) -> list[dict[str, Any]]:
    """A JSON list kept in a registered-model tag ([] if absent or unreadable)."""
    try:
        data = json.loads(tags.get(tag) or "[]")
    except json.JSONDecodeError:
        data = []
    return data if isinstance(data, list) else []


@contextlib.contextmanager
def alias_lock(c, name: str):
    """Hold the alias lock of model `name` (see the module docstring).

    Raises:
        RegistryError: another writer held it for longer than P2P_MLFLOW_TIMEOUT_S.
    """
    from mlflow.exceptions import MlflowException

    lock, token = name + LOCK_SUFFIX, uuid.uuid4().hex
    deadline = time.monotonic() + mlflow_timeout_s()
    while True:
        try:
            c.create_registered_model(
                lock,
                tags={"p2p.lock.token": token, "p2p.lock.at": repr(time.time())},
                description=f"p2p: alias change of {name} in progress (deleted when done)",
            )
            break
        except MlflowException as e:  # held (or released between create and its error)
            if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        age = _lock_age(c, lock)
        if age is not None and age > LOCK_TTL_S:
            with contextlib.suppress(MlflowException):
                c.delete_registered_model(lock)
            continue
        if time.monotonic() > deadline:
            raise RegistryError(
                f"model {name!r}: another alias change holds {lock!r} "
                f"({'?' if age is None else f'{age:.0f}'}s); try again (a crashed holder's "
                f"lock expires after {LOCK_TTL_S:g}s)"
            )
        time.sleep(0.02 + random.random() * 0.08)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            held = c.get_registered_model(lock)
            if (held.tags or {}).get("p2p.lock.token") == token:  # not broken and retaken
                c.delete_registered_model(lock)


def _lock_age(c, lock: str) -> float | None:
    from mlflow.exceptions import MlflowException

    try:
        held = c.get_registered_model(lock)
    except MlflowException:
        return None
    try:
        return time.time() - float((held.tags or {}).get("p2p.lock.at"))
    except (TypeError, ValueError):
        return time.time() - (held.creation_timestamp or 0) / 1000


class _Logs:
    """The history tags of one model, read and written under its lock."""

    def __init__(self, c, name: str) -> None:
        from mlflow.exceptions import MlflowException

        self.c, self.name = c, name
        try:
            tags = dict(c.get_registered_model(name).tags or {})
        except MlflowException as e:
            raise RegistryError(f"model {name!r}: {short(e)}") from None
        self.data = {t: read_log(tags, t) for t in (HISTORY_TAG, ROLLBACK_TAG, ALIAS_LOG_TAG)}
        self.changed: set[str] = set()

    def __getitem__(self, tag: str) -> list[dict[str, Any]]:
        self.changed.add(tag)
        return self.data[tag]

    def moved(self, alias: str, frm: int | None, to: int | None, reason: str) -> None:
        self[ALIAS_LOG_TAG].append(
            {"alias": alias, "from": frm, "to": to, "at": now(), "reason": reason}
        )

    def save(self) -> None:
        for tag in sorted(self.changed):
            entries = self.data[tag][-HISTORY_MAX:]
            self.c.set_registered_model_tag(self.name, tag, json.dumps(entries))


def _set_and_check(c, logs: _Logs, alias: str, frm: int | None, to: int, reason: str) -> None:
    """Set `alias` -> `to`, record it, and re-read it: a writer outside p2p that moved it in
    between is reported (ChampionChanged), after the logs are saved."""
    c.set_registered_model_alias(logs.name, alias, str(to))
    logs.moved(alias, frm, to, reason)
    after = alias_version(c, logs.name, alias)
    if after != to:
        logs.moved(alias, to, after, "moved by a writer outside p2p right after this move")
        logs.save()
        raise ChampionChanged(
            f"model {logs.name!r}: @{alias} was set to v{to} but another writer (outside p2p) "
            f"moved it to v{after} at once; left at v{after}: check who changes aliases"
        )


@mlflow_errors
def set_challenger(name: str, version: int, *, reason: str) -> None:
    """Point @challenger at `version` (recorded in the alias log)."""
    c = client()
    with alias_lock(c, name):
        logs = _Logs(c, name)
        frm = alias_version(c, name, CHALLENGER)
        if frm != version:
            _set_and_check(c, logs, CHALLENGER, frm, version, reason)
        logs.save()


@mlflow_errors
def promote(
    name: str, version: int, *, reason: str = "manual", expect: Any = ANY
) -> ModelVersionInfo:
    """Make `version` the champion, compare-and-set.

    Args:
        expect: the champion version (or None: no champion) the decision to promote was made
            against; the move is refused if the champion is another one now. ANY (the
            default, a manual promotion) replaces whatever champion there is; the one it
            displaced is recorded.

    Raises:
        ChampionChanged: the champion is not `expect` any more (nothing moved), or a writer
            outside p2p moved it right after this move.
    """
    c = client()
    v = get_version(name, version)
    with alias_lock(c, name):
        current = alias_version(c, name, CHAMPION)
        if expect is not ANY and current != expect:
            was = "no champion" if expect is None else f"v{expect}"
            now_is = "none" if current is None else f"v{current}"
            raise ChampionChanged(
                f"model {name!r}: not promoting v{v.version}: the decision compared against "
                f"{was} but the champion is now {now_is}; nothing moved (run the gate again)"
            )
        if current == v.version:
            return v
        logs = _Logs(c, name)
        history = logs[HISTORY_TAG]
        if current is not None and (not history or history[-1].get("version") != current):
            # champion was set outside p2p: keep it on the stack so rollback can return to it
            history.append({"version": current, "at": now(), "reason": "found as champion"})
        took = alias_version(c, name, CHALLENGER) == v.version
        history.append(
            {"version": v.version, "from": current, "at": now(), "reason": reason}
            | ({"took_challenger": True} if took else {})
        )
        try:
            _set_and_check(c, logs, CHAMPION, current, v.version, reason)
        finally:
            logs.save()
        c.set_model_version_tag(name, str(v.version), "promoted_at", now())
        if took:  # the champion is no longer a challenger; rollback gives the alias back
            c.delete_registered_model_alias(name, CHALLENGER)
            logs.moved(CHALLENGER, v.version, None, f"v{v.version} promoted")
            logs.save()
    return get_version(name, v.version)


@mlflow_errors
def rollback(name: str) -> ModelVersionInfo:
    """Move `champion` back to the previous champion; logs the rollback on the model.

    The rolled-back version gets @challenger back if its promotion took it and no other
    version holds it now; no other alias is touched.

    Raises:
        RegistryError: there is no champion, or no earlier champion still registered.
    """
    from mlflow.exceptions import MlflowException

    c = client()
    with alias_lock(c, name):
        current = alias_version(c, name, CHAMPION)
        if current is None:
            raise RegistryError(f"model {name!r} has no champion to roll back")
        logs = _Logs(c, name)
        history = logs[HISTORY_TAG]
        took = False
        while history and history[-1].get("version") == current:
            took = took or bool(history.pop().get("took_challenger"))
        target = None
        while history:
            cand = int(history[-1]["version"])
            try:
                c.get_model_version(name, str(cand))
                target = cand
                break
            except MlflowException:  # deleted since: skip it
                history.pop()
        if target is None:
            raise RegistryError(
                f"model {name!r}: no previous champion to roll back to from v{current}"
            )
        logs[ROLLBACK_TAG].append({"from": current, "to": target, "at": now()})
        try:
            _set_and_check(c, logs, CHAMPION, current, target, f"rollback from v{current}")
        finally:
            logs.save()
        c.set_model_version_tag(name, str(current), "rolled_back_at", now())
        if took and alias_version(c, name, CHALLENGER) is None:
            c.set_registered_model_alias(name, CHALLENGER, str(current))
            logs.moved(CHALLENGER, None, current, f"v{current} rolled back: challenger again")
            logs.save()
    return get_version(name, target)
