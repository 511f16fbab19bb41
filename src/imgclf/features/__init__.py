"""A trained model's layer activations as features (:mod:`imgclf.features.extract`),
classifiers trained on them or on flattened pixels (:mod:`imgclf.features.classifiers`),
and their run folders with the usual report (:mod:`imgclf.features.runs`)."""
