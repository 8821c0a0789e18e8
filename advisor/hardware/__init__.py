"""The hardware: datasheet profiles (profiles/hardware), the local probe and its 16-bit
verdicts, and the target a plan is for (a profile or the probe, with its host)."""
