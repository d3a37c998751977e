"""The textbook: one training step of minembed, the maths a learner reads.

Read in this order: ``backend`` (NumPy or CuPy, and the ``@twin`` marker), ``layers`` (each layer a
pair ``x_forward(...) -> (out, cache)`` / ``x_backward(dout, cache)``), ``bag`` and ``transformer``
(the two encoders), ``loss`` (InfoNCE), ``optim`` (Adam), ``pairs`` (positive pairs from a
corpus), ``train`` (the step and the loop). ``gradcheck`` checks every backward against finite
differences. Nothing here knows of files, the command line or the GPU's kernels: the fast twins
live in ``minembed/fast``, the product in ``minembed/product`` (docs/DESIGN.md).
"""
