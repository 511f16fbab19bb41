"""The Keras 3 / TensorFlow half of bench/data_throughput.py, run in its own interpreter.

Reads ``{x_train, y_train, x_test, y_test, mean, std}`` from an ``.npz`` (uint8 NCHW
images), trains the same network as imgclf's ``simple-cnn`` with ``model.fit`` the way
a Keras user would, and prints one JSON line: images per second of the training
epochs, seconds per epoch, test accuracy.

    .venv-bench/bin/python bench/keras_mnist.py DATA.npz --epochs 1 --batch-size 64
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402  (after the TensorFlow log level is set)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    arrays = np.load(args.data)
    mean, std = float(arrays["mean"]), float(arrays["std"])

    def prepare(x):  # (N, 1, 28, 28) uint8 -> (N, 28, 28, 1) normalized float32
        return ((x.transpose(0, 2, 3, 1).astype("float32") / 255.0) - mean) / std

    x_train, x_test = prepare(arrays["x_train"]), prepare(arrays["x_test"])
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(x_train, arrays["y_train"], batch_size=args.batch_size, epochs=args.epochs, verbose=0,
              callbacks=[Timer()])
    _, accuracy = model.evaluate(x_test, arrays["y_test"], batch_size=1000, verbose=0)
    print(json.dumps({
        "images_per_second": len(x_train) * args.epochs / sum(times),
        "seconds_per_epoch": sum(times) / len(times),
        "test_accuracy": float(accuracy),
        "versions": f"TensorFlow {tf.__version__}, Keras {keras.__version__}",
        "threads": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
