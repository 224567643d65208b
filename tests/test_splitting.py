"""Splitting inside a file by test id (pure), on the recorded Playwright listing of the TodoMVC spec."""

from __future__ import annotations

from pathlib import Path

from fleetshard.model import MachineSlots
from fleetshard.planning import build_shards
from fleetshard.runners import adapter_for
from fleetshard.splitting import join_parts, split_files

FIX = Path(__file__).parent / "fixtures" / "runners"


def listing():  # type: ignore[no-untyped-def]
    return adapter_for("playwright").parse_listing((FIX / "playwright-list-todomvc.json").read_text(),
                                                   base_dir="/tmp/rec/pw")


def test_a_fully_parallel_file_longer_than_its_share_is_split_by_test() -> None:
    found = listing()
    assert found.independent                                   # the spec's config says fullyParallel
    file = "tests/demo-todo-app.spec.ts"
    split = split_files([file, "tests/small.spec.ts"], {file: 24.0, "tests/small.spec.ts": 1.0}, found,
                        slots=4, splittable=True)
    parts = [i for i in split.items if i.startswith(file)]
    assert len(parts) == 4 and "split into 4 parts" in split.explain()
    ids = [i for p in parts for i in split.parts[p][1]]
    assert sorted(ids) == sorted(t.id for t in found.tests)    # every test once, none twice
    machines = [MachineSlots("a", 2), MachineSlots("b", 2)]
    plan = build_shards(split.items, split.weights, machines)
    shards = join_parts(plan.shards, split, found)
    assert sorted(i for s in shards for i in s.tests if i != "tests/small.spec.ts") == sorted(ids)
    assert all(s.files in ((file,), ("tests/small.spec.ts",), (file, "tests/small.spec.ts"),
                           ("tests/small.spec.ts", file)) for s in shards)


def test_no_split_unless_the_runner_or_the_user_says_so() -> None:
    found = listing()
    file = "tests/demo-todo-app.spec.ts"
    assert split_files([file], {file: 24.0}, found, slots=4, splittable=False).parts == {}
    assert split_files([file], {file: 24.0}, found, slots=1, splittable=True).parts == {}
    # history's per-test seconds balance the parts
    slow = found.tests[0].id
    split = split_files([file, "b"], {file: 24.0, "b": 24.0}, found, slots=4, splittable=True,
                        test_seconds={slow: 100.0})
    holder = next(p for p, (_, ids) in split.parts.items() if slow in ids)
    assert split.parts[holder][1] == (slow,)
