"""``scoresde inpaint``: fill the masked part of images or points with a run's model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...models.network import sample_shape
from .common import (
    UserError,
    checkpoint_option,
    command,
    count,
    data_transform,
    load_mask,
    load_model,
    load_points,
    origin,
    out_file,
    plot_extent,
    require_data,
)


def cmd_inpaint(args: argparse.Namespace) -> dict:
    """Complete the missing part of data (images or 2D points) under a checkpoint; write .npz and a picture."""
    import numpy as np
    import torch

    from ...evaluation.held_out import held_out
    from ...samplers import inpaint
    from ..image_figures import plot_inpainting

    model, data, step, _ = load_model(args, "--image")
    shape = sample_shape(model)
    transform = data_transform(data)
    if args.image == "test":
        x = held_out(require_data(data, "--image"), args.n, args.seed).x
    else:
        x, _ = load_points(args.image, args.n, args.seed, data, "--image")
        x = transform.to_model(x.float() + 0.5) if transform is not None else x.float()
    if tuple(x.shape[1:]) != shape:
        raise UserError(f"--image holds data of shape {tuple(x.shape[1:])}; the model's data has shape {shape}")
    known = load_mask(args.mask, shape)  # its shape is checked by inpaint()
    out = out_file(args.out, ".npz", args.force, Path(args.out).with_suffix(".png").name)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    result = inpaint(
        model.sde,
        model,
        x.to(args.device),
        known.to(args.device),
        method=args.method,
        steps=args.steps,
        generator=generator,
        progress=not args.json,
    )
    original, completed = x.cpu(), result.x.cpu()
    if transform is not None:
        original, completed = transform.from_model(original), transform.from_model(completed)
    np.savez(out, x=completed.numpy(), original=original.numpy(), known=known.cpu().numpy())
    fig = plot_inpainting(
        original,
        known.cpu(),
        completed,
        levels=transform.levels if transform else None,
        extent=plot_extent(data),
        title=f"inpainting ({args.method}, {result.nfe} NFE, {origin(step)})",
    )
    fig.savefig(out.with_suffix(".png"), dpi=110)
    return {
        "samples": str(out),
        "picture": str(out.with_suffix(".png")),
        "nfe": result.nfe,
        "n": int(x.shape[0]),
        "checkpoint_step": step,
        "settings": result.settings,
    }


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``scoresde inpaint``: its sub-parser and options."""
    inp = command(
        sub,
        "inpaint",
        cmd_inpaint,
        "complete the missing part of images or 2D points (inpainting / imputation)",
        "scoresde inpaint --checkpoint runs/digits --image test --mask left-half -n 16 --out runs/digits/inpaint.npz",
    )
    checkpoint_option(inp)
    inp.add_argument(
        "--image",
        default="test",
        help="'test' (held-out data of the run's data set) or a .npz file with array x "
        "(data levels for images, points for toys)",
    )
    inp.add_argument(
        "--mask",
        required=True,
        help="region to fill in: left-half, right-half, top-half, bottom-half, center "
        "(images), x1 or x2 (2D points), or a .npz file whose array 'mask' is nonzero where data is missing",
    )
    inp.add_argument(
        "--method",
        default="pc",
        help="replacement, pc (Song et al. 2021, App. I) or smc (SMCDiff; the batch is "
        "the particle population of one observation)",
    )
    inp.add_argument("--steps", type=count, default=500, help="predictor steps")
    inp.add_argument("-n", type=count, default=16, help="number of data to complete (the first n)")
    inp.add_argument(
        "--out", required=True, help="result file (.npz: x, original, known); the picture goes next to it (.png)"
    )
