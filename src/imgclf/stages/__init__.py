"""The stages of a run, one module each, in the order ``imgclf run`` calls them.

==============  ===============================================================================
:mod:`.store`   a new run folder (config, splits, facts), or an existing one read back: the same
                data splits, checked against what the folder recorded
:mod:`.train`   training with resume and extension, the learning-rate range test
:mod:`.evaluate`  clean test metrics and calibration
:mod:`.attack`  robust accuracy under the configured attacks, committed unit by unit
:mod:`.corrupt`   accuracy under the common corruptions, mCE against a baseline
:mod:`.explain`   saliency maps of clean and adversarial images
:mod:`.report`  the report rendered from the record
==============  ===============================================================================

Each stage takes the resolved settings and plain objects (:class:`~imgclf.stages.parts.RunParts`) and returns
plain objects; :class:`imgclf.pipeline.Run` opens or creates the run folder and calls them in order.
"""
