"""An end-to-end ONNX export on a JPEG, drawn (README: "Deploy"). Needs numpy, Pillow, onnxruntime.

python onnx_deploy.py model.onnx photo.jpg out.png   (model.onnx and model.json from `mtedet export --end-to-end`)
"""
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw

model, photo, out = sys.argv[1:4]
sess = ort.InferenceSession(model)
H, W = sess.get_inputs()[0].shape[2:]                              # the graph's input size
image = Image.open(photo).convert("RGB")
scale = min(H / image.height, W / image.width)                     # letterbox: fit, pad bottom/right
small = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
x = np.zeros((1, 3, H, W), np.uint8)
x[0, :, : small.height, : small.width] = np.asarray(small).transpose(2, 0, 1)
feeds = {"images": x, "orig_sizes": np.array([[image.height, image.width]])}
got = {o.name: v[0] for o, v in zip(sess.get_outputs(), sess.run(None, feeds))}
one = lambda key: next((v for k, v in got.items() if k == key or k.endswith("_" + key)), None)  # noqa: E731
tasks = json.load(open(model.removesuffix(".onnx") + ".json"))["tasks"].values()
if one("mask") is not None:                                        # class indices at input size, 255 = padding
    mask = Image.fromarray(one("mask")[: small.height, : small.width]).resize(image.size, Image.NEAREST)
    colours = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    image = Image.blend(image, Image.fromarray(colours[np.asarray(mask)]), 0.4)
if one("num_detections") is not None:                              # boxes in the photo's own pixels, best first
    names, n, draw = next(t["class_names"] for t in tasks if t["type"] == "det"), one("num_detections"), ImageDraw.Draw(image)
    for box, score, label in zip(one("boxes")[:n], one("scores")[:n], one("labels")[:n]):
        draw.rectangle(box.tolist(), outline="red", width=2)
        draw.text((box[0] + 3, box[1] + 1), f"{names[label]} {score:.2f}", fill="red")
image.save(out)
print(f"{out}: " + ", ".join(f"{k} {v.shape}" for k, v in got.items()))
