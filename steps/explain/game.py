"""The value function of an explanation: how much of a user's top-K score a coalition of past
events supports.

For a history ``x_1 … x_L`` (oldest first), a fixed list of top-K items and a baseline,

    v(S) = scale · mean over the top-K items i of  score(history with the events outside S replaced, i)

where "replaced" means the padding item (``padding``), a chosen item (an item id), or dropped
from the sequence (``removal``), and ``scale`` is 1 (the plain mean) or 0.1 (the reference
notebook's scale). The top-K list is an explicit input, computed once from the
unperturbed history by the caller: nothing here recomputes it (the defect of the reference
notebooks was to take the top-K of whichever sequence was scored first — the baseline's).

GRU4Rec's score is linear in the candidate's embedding, so the mean over the top-K is one dot
product: v(S) = h_S · (Wᵀ ē) + b · ē, with h_S the GRU's last state, ``W, b`` the output layer and
ē the mean top-K embedding.

Players are events or groups of events (``players[t]`` = the player of event ``t``). When the
players are contiguous runs of events in time order, :meth:`SequenceGame.all_values` evaluates
all 2^M coalitions with a tree over prefixes: coalitions that agree on the first j players share
the GRU state after them, the input projections of the real and baseline items are computed once,
and the hidden-to-hidden product of a parent state is shared by both of its children.
"""

from __future__ import annotations

import contextlib
import copy
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np
import torch

from steps.errors import InputError
from steps.explain.data import PADDING_ITEM
from steps.explain.model import GRU4Rec

REMOVAL = "removal"
PADDING = "padding"
#: Rows per chunk of :meth:`SequenceGame.event_values` (fixed: results do not depend on the workers).
EVENT_CHUNK = 512


def _check_items(items: np.ndarray, n_items: int, what: str) -> None:
    bad = (items < 1) | (items >= n_items)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{what}: item id {int(items[i])} at position {i} is unknown to the model (valid ids 1..{n_items - 1})")


def baseline_item(baseline: str | int, n_items: int) -> int | None:
    """The item that replaces absent events (``None`` = removal)."""
    if baseline == REMOVAL:
        return None
    if baseline == PADDING:
        return PADDING_ITEM
    item = int(baseline)
    _check_items(np.array([item]), n_items, "baseline")
    return item


class SequenceGame:
    """v(S) for one history, one fixed top-K list and one baseline (see the module docstring).

    ``model`` sets the arithmetic (pass a float64 copy for float64 attributions). ``scale``
    multiplies v (0.1 gives the reference notebook's scale: the top-K mean divided by 10 again).
    """

    def __init__(
        self,
        model: GRU4Rec,
        history: np.ndarray,
        top_k_items: np.ndarray,
        baseline: str | int = PADDING,
        players: np.ndarray | None = None,
        max_states: int = 1 << 12,
        scale: float = 1.0,
    ) -> None:
        history = np.asarray(history, dtype=np.int64)
        top_k_items = np.asarray(top_k_items, dtype=np.int64)
        n_items = model.spec.n_items
        if history.ndim != 1 or len(history) == 0:
            raise InputError("history: an empty history has nothing to explain")
        _check_items(history, n_items, "history")
        if top_k_items.ndim != 1 or len(top_k_items) == 0:
            raise InputError("top_k_items: at least one item is needed")
        _check_items(top_k_items, n_items, "top_k_items")
        self.history = history
        self.top_k_items = top_k_items
        self.baseline = baseline
        self.max_states = int(max_states)
        self._base_item = baseline_item(baseline, n_items)
        with torch.no_grad(), single_threaded_kernels():  # the thread policy of run_chunks
            w = model.i_embeddings.weight
            self.dtype = w.dtype
            rnn = model.rnn
            self._w_hh_t = rnn.weight_hh_l0.T.contiguous()
            self._b_hh = rnn.bias_hh_l0
            self._gi_item = w[torch.from_numpy(history)] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0  # (L, 3H)
            self._gi_base = (
                None if self._base_item is None else (w[self._base_item] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0)[None, :]
            )
            e_bar = w[torch.from_numpy(top_k_items)].mean(0)
            self._u = (model.out.weight.T @ e_bar) * scale  # (H,)
            self._c = (model.out.bias @ e_bar) * scale
            self.hidden_size = rnn.hidden_size
        self._set_players(np.arange(len(history)) if players is None else players)

    # ------------------------------------------------------------------ players
    def with_players(self, players: np.ndarray) -> "SequenceGame":
        """The same game over other players (``players[t]`` = player of event ``t``)."""
        game = copy.copy(self)
        game._set_players(players)
        return game

    def _set_players(self, players: np.ndarray) -> None:
        """Assign each event to a player ``0..M-1`` (every player must own at least one event)."""
        players = np.asarray(players, dtype=np.int64)
        if players.shape != self.history.shape:
            raise ValueError(f"players must have one entry per event ({len(self.history)}), got shape {players.shape}")
        m = int(players.max()) + 1
        if players.min() < 0 or len(np.unique(players)) != m:
            raise ValueError(f"players must number 0..M-1 with every player owning an event, got {players.tolist()}")
        self.players = players
        self.n_players = m
        self.contiguous = bool(np.all(np.diff(players) >= 0))

    @property
    def n_events(self) -> int:
        return len(self.history)

    # ------------------------------------------------------------------ the GRU step
    def _cell(self, gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """PyTorch's GRU update from the input part ``gi`` and hidden part ``gh`` (biases included):
        r, z = σ(gi_rz + gh_rz); n = tanh(gi_n + r ⊙ gh_n); h' = (1 − z) ⊙ n + z ⊙ h."""
        hs = self.hidden_size
        rz = torch.sigmoid_(gh[:, : 2 * hs] + gi[:, : 2 * hs])
        n = torch.tanh_(torch.addcmul(gi[:, 2 * hs :], rz[:, :hs], gh[:, 2 * hs :]))
        return torch.lerp(n, h, rz[:, hs:])

    def _gh(self, h: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self._b_hh, h, self._w_hh_t)

    def _readout(self, h: torch.Tensor) -> np.ndarray:
        return (h @ self._u + self._c).double().numpy()

    # ------------------------------------------------------------------ values
    def event_values(self, event_masks: np.ndarray, chunk: int = EVENT_CHUNK) -> np.ndarray:
        """v for each row of ``event_masks`` ``(B, L)`` (True = the event is present), float64.

        Rows are evaluated in chunks of ``chunk`` (a fixed size, so the result does not depend on
        the number of workers) under the thread policy of :func:`run_chunks`."""
        masks = np.asarray(event_masks, dtype=bool)
        if masks.ndim != 2 or masks.shape[1] != self.n_events:
            raise ValueError(f"event_masks must be (B, {self.n_events}), got {masks.shape}")
        out = np.empty(len(masks), dtype=np.float64)

        def fill(c: int) -> None:
            s = c * chunk
            with torch.no_grad():
                m = torch.from_numpy(masks[s : s + chunk])
                h = torch.zeros(len(m), self.hidden_size, dtype=self.dtype)
                for t in range(self.n_events):
                    gh = self._gh(h)
                    present = m[:, t : t + 1]
                    if self._gi_base is None:
                        h = torch.where(present, self._cell(self._gi_item[t : t + 1], gh, h), h)
                    else:
                        gi = torch.where(present, self._gi_item[t : t + 1], self._gi_base)
                        h = self._cell(gi, gh, h)
                out[s : s + len(m)] = self._readout(h)

        run_chunks(fill, -(-len(masks) // chunk))
        return out

    def values(self, coalitions: np.ndarray) -> np.ndarray:
        """v for each row of ``coalitions`` ``(B, M)`` over players (True = the player is present)."""
        coalitions = np.asarray(coalitions, dtype=bool)
        if coalitions.ndim != 2 or coalitions.shape[1] != self.n_players:
            raise ValueError(f"coalitions must be (B, {self.n_players}), got {coalitions.shape}")
        return self.event_values(coalitions[:, self.players])

    def full_value(self) -> float:
        return float(self.event_values(np.ones((1, self.n_events), dtype=bool))[0])

    def empty_value(self) -> float:
        return float(self.event_values(np.zeros((1, self.n_events), dtype=bool))[0])

    # ------------------------------------------------------------------ all coalitions
    def _expand(self, h: torch.Tensor, first_player: int, last_player: int) -> torch.Tensor:
        """States after players ``first_player..last_player-1`` for every combination of them.

        Output row ``k * len(h) + i`` continues input state ``i`` with the players whose bits are
        set in ``k`` (bit 0 = ``first_player``).
        """
        blocks = [np.flatnonzero(self.players == p) for p in range(first_player, last_player)]
        for events in blocks:
            gh = self._gh(h)  # shared by both children
            t0 = int(events[0])
            incl = self._cell(self._gi_item[t0 : t0 + 1], gh, h)
            excl = h if self._gi_base is None else self._cell(self._gi_base, gh, h)
            for t in events[1:]:
                t = int(t)
                incl = self._cell(self._gi_item[t : t + 1], self._gh(incl), incl)
                if self._gi_base is not None:
                    excl = self._cell(self._gi_base, self._gh(excl), excl)
            h = torch.cat([excl, incl])
        return h

    def all_values(self) -> np.ndarray:
        """v(S) for every coalition, indexed by ``sum(2**p for p in S)`` (player 0 = bit 0), float64.

        Contiguous players: the first players are expanded breadth-first, then each of their
        states is expanded over the remaining players in a chunk of at most ``max_states`` rows;
        the chunks run under the thread policy of :func:`run_chunks`. The result does not depend
        on the number of workers.
        """
        m = self.n_players
        if not self.contiguous:
            return self.values(all_coalitions(m))
        r = min(m, max(1, int(math.log2(max(self.max_states, 2)))))
        j = m - r  # players expanded breadth-first before splitting into chunks of 2^r states
        with torch.no_grad(), single_threaded_kernels():
            heads = self._expand(torch.zeros(1, self.hidden_size, dtype=self.dtype), 0, j)  # (2^j, H)
        values = np.empty(1 << m, dtype=np.float64)
        table = values.reshape(1 << r, 1 << j)  # [suffix bits, prefix bits]

        def fill(a: int) -> None:
            with torch.no_grad():
                table[:, a] = self._readout(self._expand(heads[a : a + 1], j, m))

        run_chunks(fill, len(heads))
        return values


def run_chunks(fill: Callable[[int], None], n_chunks: int) -> None:
    """The thread policy of every estimator: ``fill(0) … fill(n_chunks − 1)`` (independent pieces
    of work) run on ``min(torch.get_num_threads(), n_chunks)`` worker threads, each with
    single-threaded kernels; a single piece runs in the calling thread, single-threaded too.

    On a few busy cores, independent chunks beat one chunk's small kernels split across threads:
    every kernel of a multi-threaded evaluation waits for its slowest thread, so one descheduled
    thread stalls the whole evaluation (2,048 coalitions took 2.0 s with 2 threads and 0.056 s with
    1 at load 8)."""
    workers = min(torch.get_num_threads(), n_chunks)
    with single_threaded_kernels():
        if workers <= 1:
            for a in range(n_chunks):
                fill(a)
            return
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fill, range(n_chunks)))


@contextlib.contextmanager
def single_threaded_kernels() -> Iterator[None]:
    """``torch.set_num_threads(1)`` inside the block, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def all_coalitions(m: int) -> np.ndarray:
    """``(2^m, m)`` booleans: row ``k`` holds the players whose bits are set in ``k``."""
    return ((np.arange(1 << m, dtype=np.int64)[:, None] >> np.arange(m)) & 1).astype(bool)
