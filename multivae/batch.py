"""A batch of user rows kept sparse: CSR pieces as torch tensors, never densified for the whole dataset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch


@dataclass
class SparseBatch:
    """Rows of a binary user x item matrix: `indices` (nnz,), `offsets` (B + 1,) as CSR `indptr`."""

    indices: torch.Tensor
    offsets: torch.Tensor
    n_items: int

    @classmethod
    def from_csr(cls, m: sp.csr_matrix, rows: np.ndarray | slice | None = None, pin: bool = False) -> "SparseBatch":
        """`pin`: page-locked host memory, so that `.to(cuda)` copies asynchronously (non_blocking)."""
        if rows is not None:
            m = m[rows]
        indices = torch.from_numpy(np.ascontiguousarray(m.indices, dtype=np.int64))
        offsets = torch.from_numpy(np.ascontiguousarray(m.indptr, dtype=np.int64))
        if pin:
            indices, offsets = indices.pin_memory(), offsets.pin_memory()
        return cls(indices=indices, offsets=offsets, n_items=int(m.shape[1]))

    @property
    def n_rows(self) -> int:
        return int(self.offsets.numel() - 1)

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def to(self, device: torch.device | str) -> "SparseBatch":
        return SparseBatch(self.indices.to(device, non_blocking=True), self.offsets.to(device, non_blocking=True), self.n_items)

    def counts(self) -> torch.Tensor:
        """Items per row."""
        return self.offsets[1:] - self.offsets[:-1]

    def row_of_each(self) -> torch.Tensor:
        """The row index of every stored entry (for gathers and scatters)."""
        return self.repeat_rows(torch.arange(self.n_rows, device=self.device))

    def repeat_rows(self, per_row: torch.Tensor) -> torch.Tensor:
        """A per-row value repeated for each of the row's entries. The output size is known on the host,
        so CUDA need not read the counts back (repeat_interleave would wait for the device otherwise)."""
        return torch.repeat_interleave(per_row, self.counts(), output_size=self.indices.numel())

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        x = torch.zeros(self.n_rows, self.n_items, dtype=dtype, device=self.device)
        x[self.row_of_each(), self.indices] = 1
        return x
