"""Small spec builders and models shared by the tests."""
from search_spaces import ArchSpec, DecoderSpec, InputSpec, StageSpec

DECODER_WIDTH = {"bilinear": 16, "erfnet": 0, "apn": 1, "dupsample": 32}


def tiny_spec(core="nb1d", decoder="bilinear", downsampler="erfnet", ratio=1, tvconv_from=0,
              height=32, width=32, num_classes=3, kernel=3, dilations=(1, 2)) -> ArchSpec:
    """A small network exercising one value of every axis (fast enough to build by the hundred)."""
    growth = 4 if core == "eda" else 0
    stages = tuple(
        StageSpec(width=w, depth=d, core=core, kernel=kernel, dilations=dilations, dropout=0.1, growth=growth)
        for w, d in ((8, 1), (12, 1), (16, 2))
    )
    return ArchSpec(
        input=InputSpec(height=height, width=width, in_channels=3, num_classes=num_classes),
        stages=stages, decoder=DecoderSpec(kind=decoder, width=DECODER_WIDTH[decoder]),
        ratio=ratio, downsampler=downsampler, tvconv_from=tvconv_from,
    )


def augment_reference(image, mask, height: int, width: int, top: int, left: int, flip: bool):
    """The training augmentation's definition for one sample and one draw: resize to height x width
    (image bilinear, mask nearest), crop back to the input size at (top, left), flip if asked."""
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    img = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    msk = F.interpolate(mask[None, None].float(), size=(height, width), mode="nearest")[0, 0]
    img, msk = img[..., top:top + h, left:left + w], msk[top:top + h, left:left + w]
    if flip:
        img, msk = img.flip(-1), msk.flip(-1)
    return img, msk.to(mask.dtype)


def overflowing_model(data, bad_steps: set[int], spec: ArchSpec | None = None):
    """`spec` (a tiny one by default) and its model, whose logits are inf on the given training steps
    (counted from 1), as fp16 activations can be."""
    from trainers.train import prepare_model

    spec = spec or tiny_spec(num_classes=data.info.num_classes)
    model, calls = prepare_model(spec, data, seed=0), [0]

    def hook(module, args, out):
        if module.training:
            calls[0] += 1
            if calls[0] in bad_steps:
                return out * float("inf")
        return out

    model.register_forward_hook(hook)
    return spec, model


def refused(main, argv, capsys) -> str:
    """The one line a command run as typed (`main` through `nas.cli.run`) printed on refusing (exit 2)."""
    import pytest

    from nas.cli import run

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run(main, [str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()
