"""Pipeline schedules as orders of typed units: 1F1B, Megatron-Core's interleaved 1F1B, and the pairing of a
forward with the backward after it (the all-to-all overlap), with the durations a timeline plays them at."""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence


class Unit(NamedTuple):
    """One forward or backward of a micro-batch's model chunk on a stage."""

    kind: str
    """F or B."""
    micro: int
    chunk: int


class Pair(NamedTuple):
    """A steady-state forward run together with the backward after it, of another micro-batch: (micro-batch,
    chunk) of each."""

    forward: tuple[int, int]
    backward: tuple[int, int]


class Item(NamedTuple):
    """A unit with its duration and its label in the timeline's slices."""

    kind: str
    micro: int
    chunk: int
    seconds: float
    label: str


def one_f_one_b(stages: int, micro_batches: int) -> list[list[tuple[str, int]]]:
    """Each stage's order of work under 1F1B: warm-up forwards, then one forward one backward, then cool-down, as
    (F or B, micro-batch)."""
    return [[(unit.kind, unit.micro) for unit in order] for order in interleaved_one_f_one_b(stages, micro_batches, 1)]


def interleaved_one_f_one_b(stages: int, micro_batches: int, chunks: int, extra_warmup: int = 0) -> list[list[Unit]]:
    """Each stage's order of units (F or B, micro-batch, model chunk) under Megatron-Core's interleaved 1F1B.

    With `chunks` = v model chunks per stage the model is v x stages virtual stages, chunk c
    of stage s being virtual stage c x stages + s. The k-th forward of a stage runs chunk
    (k // stages) % v of micro-batch (k // (stages v)) stages + k % stages; backwards go
    through the chunks in reverse. Stage s first runs (stages - s - 1) x 2 + (v - 1) x stages
    forwards (stages - s - 1 for v = 1), then alternates one forward, one backward. `extra_warmup` more
    forwards shift the steady state so that every backward follows another micro-batch's forward, which the
    all-to-all overlap runs with it (one more micro-batch of activations in flight, as in Megatron-Core's
    combined 1F1B).
    """
    total = micro_batches * chunks

    def unit(k: int, backward: bool) -> tuple[int, int]:
        chunk = (k // stages) % chunks
        micro = (k // (stages * chunks)) * stages + k % stages if chunks > 1 else k
        return micro, (chunks - 1 - chunk if backward else chunk)

    orders = []
    for stage in range(stages):
        warmup = stages - stage - 1 if chunks == 1 else (stages - stage - 1) * 2 + (chunks - 1) * stages
        warmup = min(warmup + extra_warmup, total)
        order = [Unit("F", *unit(k, False)) for k in range(warmup)]
        forward_next, backward_next = warmup, 0
        while backward_next < total:
            if forward_next < total:
                order.append(Unit("F", *unit(forward_next, False)))
                forward_next += 1
            order.append(Unit("B", *unit(backward_next, True)))
            backward_next += 1
        orders.append(order)
    return orders


def paired(order: list[Unit]) -> list[Unit | Pair]:
    """A stage's 1F1B order with each steady-state forward and the backward after it (of another micro-batch)
    merged into one `Pair` that runs them together, one's communication under the other's compute."""
    units: list[Unit | Pair] = []
    index = 0
    while index < len(order):
        item = order[index]
        following = order[index + 1] if index + 1 < len(order) else None
        if item.kind == "F" and following is not None and following.kind == "B" and following.micro != item.micro:
            units.append(Pair((item.micro, item.chunk), (following.micro, following.chunk)))
            index += 2
        else:
            units.append(item)
            index += 1
    return units


def overlapped_seconds(compute: float, collectives: float, stretch: float = 1.0) -> float:
    """A forward and a backward run together: each one's collectives under the other's compute, so the pair takes
    the longer of the two streams, the compute that runs under communication stretched by `stretch` (the SMs the
    communication kernels hold)."""
    return max(compute + min(compute, collectives) * (stretch - 1), collectives)


def pair_split(forward: float, backward: float, pair: float) -> tuple[float, float]:
    """A forward-backward pair of `pair` seconds as two halves: the forward's (its share of the pair's work; its
    result leaves when it ends) and the backward's (which needs the next stage's gradient before it starts)."""
    forward_part = pair * forward / (forward + backward) if forward + backward > 0 else 0.0
    return forward_part, pair - forward_part


def stage_items(
    forward: Sequence[float],
    backward: Sequence[float],
    micro_batches: int,
    chunks: int,
    pair: Optional[Sequence[float]] = None,
) -> list[list[Item]]:
    """Each stage's F and B in schedule order with their durations. With `pair` (seconds per stage, a whole
    forward and backward of the stage run together), the all-to-all overlap: one more warm-up forward (with
    virtual stages too: Megatron-Core's `get_pp_rank_microbatches` adds it when `overlap_moe_expert_parallel_comm`
    is set), and each steady-state forward and the backward after it run as a pair whose two halves take
    `pair_split` of the pair's time, a model chunk's share of it."""
    stages = len(forward)
    items = []
    orders = interleaved_one_f_one_b(stages, micro_batches, chunks, 1 if pair else 0)
    for stage, order in enumerate(orders):
        stage_list: list[Item] = []
        for unit in paired(order) if pair else order:
            if isinstance(unit, Pair):
                # a pair of model chunks: 1/chunks of the stage's forward, backward and pair (the pair's time is
                # linear in both streams' seconds, `overlapped_seconds`)
                halves = pair_split(forward[stage], backward[stage], pair[stage] / chunks)  # type: ignore[index]
                label = f"F{unit.forward[0]}+B{unit.backward[0]}"
                stage_list.append(Item("F", *unit.forward, halves[0], label))
                stage_list.append(Item("B", *unit.backward, halves[1], label))
            else:
                kind, micro, chunk = unit
                seconds = (forward[stage] if kind == "F" else backward[stage]) / chunks
                label = f"{kind}{micro}" + (f".{chunk}" if chunks > 1 else "")
                stage_list.append(Item(kind, micro, chunk, seconds, label))
        items.append(stage_list)
    return items
