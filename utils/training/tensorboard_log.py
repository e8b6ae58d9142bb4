"""Optional TensorBoard logging (--tensorboard=true): per-epoch scalars and a projector of test embeddings.

tensorboard is not a requirement; config.validate refuses the option, with the install command, when the
package is missing, and nothing here is imported unless the option is on.
"""

from __future__ import annotations

from pathlib import Path

import torch


class TensorBoardLog:
    """Writes into `folder`; `epochs` logs every history row not yet written (resumes rewrite them all)."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer, self.written = SummaryWriter(log_dir=str(folder)), 0

    def epochs(self, history: list[dict]) -> None:
        for h in history[self.written:]:
            for key in ("train_loss", "val_loss", "val_acc", "val_angle_deg", "lr"):
                self.writer.add_scalar(key, h[key], global_step=h["epoch"])
        self.written = len(history)
        self.writer.flush()

    def projector(self, emb: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> None:
        """Test embeddings with their digits as metadata and as thumbnails (uint8 [N, H, W])."""
        self.writer.add_embedding(emb, metadata=labels.tolist(), label_img=images.unsqueeze(1).float() / 255.0,
                                  tag="test_embeddings")
        self.writer.close()
