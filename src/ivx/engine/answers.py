"""Full-answer scoring (`answer: full`): the probability of every token of a multi-token answer.

The default (`first_token`, as in ROME) scores the first token that follows the prompt. With
`answer: full`, each run (clean, source, corrupted, every cell) feeds the prompt followed by the
answer's tokens but its last (teacher forcing) and `target_prob` is the product of the answer
tokens' probabilities at their positions. Interventions address prompt positions, which the
appended tokens do not move, and a causal model's prompt positions do not see them, so every
prompt-position number is unchanged; the answer tokens then see the intervened prompt.

This scoring keeps the runner's batching but turns its exact shortcuts (prefix and layer reuse,
no-op skipping, deferred unembedding) off: they assume the last position is the prompt's.
`kl`, `top_k`, `target_logit` and `target_rank` stay the next-token view at the prompt's end.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ivx.config.loader import LoadedConfig
from ivx.engine.executor import Executor
from ivx.engine.workload import Scoring
from ivx.plan.grid import Cell, Plan
from ivx.plan.tokenization import TokenizedPrompt

if TYPE_CHECKING:
    import torch

    from ivx.model.loading import LoadedModel


class FullAnswer(Scoring):
    """Scoring by P(answer): rows carry the answer continuation, `target_prob` is its product."""

    all_logits = True  # the answer tokens are scored at their positions
    shortcuts_off = "answer: full reads the logits at the answer's positions"

    def __init__(self, prompts: list[TokenizedPrompt]) -> None:
        self.answer: dict[int, tuple[int, tuple[int, ...]]] = {}  # prompt → (prompt length, answer ids)
        self.source_len: dict[int, int] = {}
        self.extended: dict[int, TokenizedPrompt] = {}  # prompts followed by their answer but its last
        for p in prompts:
            rest = tuple(p.target_ids[:-1]) if p.target_ids else ()
            self.answer[p.index] = (p.length, tuple(p.target_ids or ()))
            if p.source_ids is not None:
                self.source_len[p.index] = len(p.source_ids)
            source = p.source_ids + rest if p.source_ids is not None else None
            self.extended[p.index] = dataclasses.replace(p, base_ids=p.base_ids + rest, source_ids=source)
        self.full_clean: dict[int, float] = {}
        self.full_source: dict[int, float] = {}
        self.full_corrupt: dict[int, float] = {}
        self.full_cell: dict[int, float] = {}

    def rows(self, rows: int, length: int) -> int:
        """Fewer rows: every position's logits are kept."""
        return max(1, rows // max(1, length))

    def captured(self, prompt: int, ids: tuple[int, ...], logits: torch.Tensor) -> torch.Tensor:
        """Record P(answer) of a clean or source run ([seq, vocab]); its logits at the prompt's end."""
        # a source run differs from the base run (an identical one gives the same numbers)
        is_source = prompt in self.source_len and ids != self.extended[prompt].base_ids
        start = (self.source_len[prompt] if is_source else self.answer[prompt][0]) - 1
        store = self.full_source if is_source else self.full_clean
        store[prompt] = float(answer_prob(logits.unsqueeze(0), start, self.answer[prompt][1])[0])
        return logits[start]

    def ran(self, cells: list[Cell], logits: torch.Tensor, samples: int) -> torch.Tensor:
        """Record P(answer) of each cell ([rows, seq, vocab]); the logits at the prompt's end."""
        import torch

        last = []
        for i, cell in enumerate(cells):
            rows = logits[i * samples : (i + 1) * samples]
            length, answer = self.answer[cell.prompt]
            value = float(answer_prob(rows, length - 1, answer).mean())
            if cell.index < 0:
                self.full_corrupt[cell.prompt] = value
            else:
                self.full_cell[cell.index] = value
            last.append(rows[:, length - 1])
        return torch.cat(last)

    def reference(self, prompt: int, corrupted: dict[str, float], clean: dict[str, float]) -> None:
        """`target_prob` of the clean (source) and corrupted runs is P(answer)."""
        clean["target_prob"] = self.full_source.get(prompt, self.full_clean.get(prompt, float("nan")))
        corrupted["target_prob"] = self.full_corrupt.get(prompt, self.full_clean.get(prompt, float("nan")))

    def patched(self, cell: Cell, values: dict[str, float]) -> dict[str, float]:
        """A cell's `target_prob` is P(answer)."""
        if cell.index in self.full_cell:
            return {**values, "target_prob": self.full_cell[cell.index]}
        return values

    def truncated(self, prompts: list[TokenizedPrompt]) -> list[TokenizedPrompt]:
        """The prompts without their answer continuation (subjects are swapped in those)."""
        return [dataclasses.replace(p, base_ids=p.base_ids[: self.answer[p.index][0]]) for p in prompts]

    def continued(self, prompt: int, ids: tuple[int, ...]) -> tuple[int, ...]:
        """A replaced prompt followed by its answer continuation."""
        return ids + self.extended[prompt].base_ids[len(ids) :]


def answer_prob(logits: torch.Tensor, start: int, answer: tuple[int, ...]) -> torch.Tensor:
    """P(answer) per row from [b, s, vocab] logits, answer token j predicted at start + j."""
    import torch

    if not answer:
        return torch.full((logits.shape[0],), float("nan"))
    logp = torch.log_softmax(logits[:, start : start + len(answer)].float(), dim=-1)
    index = torch.tensor(answer, device=logp.device).expand(logits.shape[0], -1).unsqueeze(-1)
    return logp.gather(-1, index).squeeze(-1).sum(-1).exp().cpu()  # [b]


def executor(cfg: LoadedConfig, lm: LoadedModel, prompts: list[TokenizedPrompt], plan: Plan) -> Executor:
    """The executor for this experiment's answer scoring."""
    if cfg.experiment.answer == "full":
        scoring = FullAnswer(prompts)
        return Executor(cfg, lm, list(scoring.extended.values()), plan, scoring)
    return Executor(cfg, lm, prompts, plan)
