"""Neural-network pieces written in NumPy, checked against torch autograd: activation functions
with their analytic derivatives (:mod:`imgclf.numpy_nn.activations`) and a multilayer perceptron
with hand-written forward and backward passes (:mod:`imgclf.numpy_nn.numpy_mlp`), which
``imgclf mlp-numpy`` and the ``numpy-mlp`` feature classifier train."""
