"""What one arm x seed computes: the training loop (loop.py), augmentation
(augment.py and one file per regime in regimes/), diagnostics, and the job that
ties them together (job.py).

An arm's fingerprint hashes the code it runs (pipeline.core.provenance): this
package, its own model's file and its own regime's file.
"""
