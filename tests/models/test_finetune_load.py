"""Fine-tuning loads (strict=False): another class set, another head set, an effdet file."""
import pytest
import torch

from multitask_edet.errors import CheckpointError
from multitask_edet.models.factory import create_model, load_checkpoint
from safetensors.torch import save_file


def _save(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_other_class_count_is_an_error_strictly_and_fresh_predictor_when_finetuning(tmp_path):
    src = create_model("test-efficientdet", tasks=("det",), det={"num_classes": 90})
    ckpt = _save(src, tmp_path / "coco.safetensors")
    with pytest.raises(CheckpointError, match="strict=False"):
        create_model("test-efficientdet", tasks=("det",), det={"num_classes": 20}, checkpoint=ckpt)

    dst = create_model("test-efficientdet", tasks=("det",), det={"num_classes": 20})
    fresh = {k: v.clone() for k, v in dst.state_dict().items()}
    left = load_checkpoint(dst, ckpt, strict=False)
    assert left == ["heads.det.cls_net.predict.conv_pw.weight", "heads.det.cls_net.predict.conv_pw.bias"]
    sd_src, sd_dst = src.state_dict(), dst.state_dict()
    for k, v in sd_dst.items():
        if k in left:  # the class predictor keeps its prior-probability initialisation
            assert torch.equal(v, fresh[k])
        else:
            assert torch.equal(v, sd_src[k]), k


def test_det_checkpoint_under_a_new_seg_head(tmp_path):
    src = create_model("test-efficientdet", tasks=("det",))
    ckpt = _save(src, tmp_path / "det.safetensors")
    joint = create_model("test-efficientdet", tasks=("det", "seg"), checkpoint=ckpt, strict=False)
    sd_src, sd_joint = src.state_dict(), joint.state_dict()
    assert torch.equal(sd_joint["heads.det.box_net.predict.conv_pw.weight"], sd_src["heads.det.box_net.predict.conv_pw.weight"])
    backbone = [k for k in sd_src if k.startswith("backbone.body.")]
    assert backbone and all(torch.equal(sd_joint[k], sd_src[k]) for k in backbone)


def test_nothing_in_common_is_an_error(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="shares no weight"):
        create_model("test-efficientdet", tasks=("det",), checkpoint=path, strict=False)
