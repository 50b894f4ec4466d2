"""Label images with an exported .tflite through MediaPipe Tasks' ImageClassifier and through headstart.

MediaPipe loads the file as it loads a Model Maker classifier (its metadata gives the
labels and the head names); it resizes the whole image with its own kernel, headstart
shortest-side-and-centre-crop with the recorded one, so labels can differ on a few
images.  Prints one JSON object: images, top-1 agreement between the two, and each
one's accuracy against the folder names.  ``--headstart_pixels`` hands MediaPipe the
pixels headstart decodes (already at the input size, so MediaPipe resizes nothing): then
only the model and its metadata are compared, and the top scores' largest difference is
printed too.

mediapipe requires opencv-contrib-python, which would replace the opencv-python-headless
headstart uses; its image classifier needs neither, so install it on its own:

    pip install --no-deps --target /tmp/mp mediapipe
    PYTHONPATH=/tmp/mp python benchmarks/mediapipe_check.py --model model-fp32.tflite --image_dir /tmp/holdout
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help=".tflite written by 'headstart export'")
    parser.add_argument("--image_dir", type=Path, required=True, help="labelled images, one folder per label")
    parser.add_argument("--headstart_pixels", action="store_true", help="give MediaPipe headstart's decoded pixels")
    args = parser.parse_args()

    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision
    from PIL import Image

    from headstart.data import find_images, load_image
    from headstart.model import load_model

    paths = find_images([args.image_dir])
    model = load_model(args.model)
    predictions = model.predict_files(paths, top_k=1)[0]
    ours = {str(p.path): p.label for p in predictions}
    our_scores = {str(p.path): p.top[0][1] for p in predictions}
    score_diff = 0.0
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(args.model)),
                                            max_results=1)
    theirs, heads = {}, set()
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for path in paths:
            if args.headstart_pixels:
                rgb = np.ascontiguousarray(load_image(path, model.preprocessing))
            else:
                rgb = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
            heads.update(h.head_name for h in result.classifications)
            top = result.classifications[0].categories[0]
            theirs[str(path)] = top.category_name
            if args.headstart_pixels:
                score_diff = max(score_diff, abs(top.score - our_scores[str(path)]))
    truth = {str(p): Path(p).parent.name for p in paths}
    keys = sorted(set(ours) & set(theirs))
    print(json.dumps({"model": str(args.model), "images": len(keys), "heads": sorted(heads),
                      "agreement": round(float(np.mean([ours[k] == theirs[k] for k in keys])), 4),
                      "mediapipe_accuracy": round(float(np.mean([theirs[k] == truth[k] for k in keys])), 4),
                      "headstart_accuracy": round(float(np.mean([ours[k] == truth[k] for k in keys])), 4),
                      **({"max_top_score_diff": score_diff} if args.headstart_pixels else {})},
                     indent=2))


if __name__ == "__main__":
    main()
