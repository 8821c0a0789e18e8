"""The decision framework as data: the taxonomy of techniques, the facts rules read, the
condition language, the rule base and its engine, the consistency check, and the candidate
dimensions the plan search varies."""
