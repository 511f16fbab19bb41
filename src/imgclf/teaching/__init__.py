"""What the seed notebooks taught, made correct and tested: activation functions with
their derivatives (:mod:`imgclf.teaching.activations`) and a multilayer perceptron
written from scratch in NumPy (:mod:`imgclf.teaching.numpy_mlp`)."""
