"""A model's status moves (one table, illegal moves refused) and the choice of room for a
load (``room_for``), without a registry or a clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.discovery import ModelSpec
from app.hosted import MOVES, Event, Hosted, IllegalMove, ModelStatus, Room, room_for

S, E = ModelStatus, Event


def hosted(name: str, status: ModelStatus = S.UNLOADED, *, last_used: float = 0.0,
           waiting: int = 0) -> Hosted:
    h = Hosted(ModelSpec(name, Path(f"/models/{name}.gguf")), status=status, waiting=waiting)
    h.last_used = last_used
    return h


@pytest.mark.parametrize(("start", "events", "end"), [
    (S.UNLOADED, [E.LOAD, E.LOADED], S.LOADED),
    (S.UNLOADED, [E.LOAD, E.FAILED, E.LOAD, E.LOADED], S.LOADED),  # a failed load is retried
    (S.UNLOADED, [E.LOAD, E.CANCELLED], S.UNLOADED),
    (S.LOADED, [E.UNLOAD, E.UNLOADED], S.UNLOADED),
    (S.LOADED, [E.UNLOAD, E.DRAIN_TIMEOUT], S.LOADED),  # still in use: it stays loaded
    (S.UNLOADED, [E.ADOPT, E.UNLOAD, E.UNLOADED, E.LOAD], S.LOADING),
    (S.LOADING, [E.CLOSE], S.UNLOADED),
    (S.UNLOADING, [E.CLOSE], S.UNLOADED),
])
def test_legal_paths_end_where_the_table_says(start: ModelStatus, events: list[Event],
                                              end: ModelStatus) -> None:
    h = hosted("m", start)
    for event in events:
        h.apply(event)
    assert h.status is end


@pytest.mark.parametrize(("start", "event"), [
    (S.LOADED, E.LOAD),  # loading a loaded model twice would leak its first runtime
    (S.LOADING, E.LOAD),
    (S.UNLOADING, E.LOAD),  # its memory is not freed yet
    (S.UNLOADED, E.UNLOAD),
    (S.LOADING, E.UNLOAD),  # a load in flight is cancelled, not unloaded
    (S.UNLOADING, E.UNLOAD),
    (S.LOADED, E.LOADED),
    (S.LOADED, E.ADOPT),
    (S.FAILED, E.UNLOADED),
])
def test_an_illegal_move_is_refused_and_changes_nothing(start: ModelStatus, event: Event) -> None:
    h = hosted("m", start)
    with pytest.raises(IllegalMove, match=f"no move '{event.value}' from '{start.value}'"):
        h.apply(event)
    assert h.status is start


def test_every_status_is_reachable_and_every_event_is_used() -> None:
    assert {end for end in MOVES.values()} == set(ModelStatus)
    assert {event for _, event in MOVES} == set(Event)


def test_room_is_free_below_the_limit() -> None:
    wanted = hosted("b")
    assert room_for(wanted, [hosted("a", S.LOADED), wanted], 2) == (Room.NOW, None)


def test_an_unloading_model_holds_its_place_until_freed() -> None:
    wanted = hosted("b")
    models = [hosted("a", S.UNLOADING), hosted("c", S.LOADED), wanted]
    assert room_for(wanted, models, 2) == (Room.SOON, None)


def test_the_least_recently_used_idle_model_is_the_one_evicted() -> None:
    wanted = hosted("c")
    old, new = hosted("a", S.LOADED, last_used=1.0), hosted("b", S.LOADED, last_used=5.0)
    assert room_for(wanted, [new, old, wanted], 2) == (Room.SOON, old)


def test_busy_models_are_never_evicted() -> None:
    wanted = hosted("c")
    busy = [hosted("a", S.LOADED, waiting=1), hosted("b", S.LOADING)]
    assert room_for(wanted, [*busy, wanted], 2) == (Room.BLOCKED, None)
