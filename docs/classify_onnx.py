# python classify_onnx.py model.standalone.onnx IMAGE...: classify with onnxruntime, pillow and numpy alone
import json
import sys

import numpy as np
import onnxruntime
from PIL import Image, ImageOps

session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
short, crop, classes = int(meta["resize_size"]), int(meta["input_size"]), json.loads(meta["classes"])
for path in sys.argv[2:]:
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    size = [short if side == min(image.size) else int(short * side / min(image.size)) for side in image.size]
    pixels = np.asarray(image.resize(size, Image.Resampling[meta["interpolation"].upper()]))
    top, left = np.round((np.array(pixels.shape[:2]) - crop) / 2).astype(int)  # half to even, as round()
    probabilities = session.run(None, {"images": pixels[None, top : top + crop, left : left + crop]})[0][0]
    print(f"{path}\t{classes[probabilities.argmax()]}\t{probabilities.max():.6f}")
