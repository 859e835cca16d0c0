"""The switch board: the settings as the initial value, the database as the shared state."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.access.switches import SwitchBoard, Switches


async def test_settings_seed_the_state_and_a_change_of_settings_wins_on_restart(
    engine: AsyncEngine,
) -> None:
    first = SwitchBoard(engine, Switches(maintenance=True))
    await first.load(adopt_settings=True)
    assert first.current == Switches(maintenance=True)

    # Changed at run time; a restart with the same settings keeps the change.
    await first.set(maintenance=False, disabled_features=["callbacks", "tasks"])
    same = SwitchBoard(engine, Switches(maintenance=True))
    assert await same.load(adopt_settings=True) == Switches(
        False, frozenset({"callbacks", "tasks"})
    )
    # The CLI reads the state without imposing its own settings.
    cli = SwitchBoard(engine, Switches())
    assert (await cli.load()).disabled_features == {"callbacks", "tasks"}
    # A restart with other settings: the operator changed the configuration.
    changed = SwitchBoard(engine, Switches(False, frozenset({"image_urls"})))
    assert await changed.load(adopt_settings=True) == Switches(False, frozenset({"image_urls"}))


async def test_a_holder_sees_a_change_made_through_another_board(engine: AsyncEngine) -> None:
    here = SwitchBoard(engine, Switches())
    await here.load(adopt_settings=True)
    seen = here.current  # what the gateway holds
    there = SwitchBoard(engine, Switches())
    await there.load()
    await there.set(maintenance=True)
    assert seen.maintenance is False
    await here.refresh()
    assert seen.maintenance is True and seen.disabled("tasks") is False
    await there.set(disabled_features=["tasks", "nonsense"])
    await here.refresh()
    assert seen.disabled_features == {"tasks"}  # an unknown name never switches anything


async def test_a_reload_request_reaches_the_other_boards_once(engine: AsyncEngine) -> None:
    here = SwitchBoard(engine, Switches())
    there = SwitchBoard(engine, Switches())
    heard: dict[str, int] = {"here": 0, "there": 0}
    here.on_reload(lambda: heard.__setitem__("here", heard["here"] + 1))
    there.on_reload(lambda: heard.__setitem__("there", heard["there"] + 1))
    await here.load(adopt_settings=True)
    await there.load()
    await there.request_reload()
    await here.refresh()
    await there.refresh()
    await here.refresh()
    assert heard == {"here": 1, "there": 0}  # the asker has reloaded already
    # A board that starts later does not take the standing request for news.
    late = SwitchBoard(engine, Switches())
    late.on_reload(lambda: heard.__setitem__("late", 1))
    await late.load()
    await late.refresh()
    assert "late" not in heard
