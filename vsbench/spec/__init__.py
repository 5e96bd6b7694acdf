"""What a verification query is, shared by export and verify: properties, instances, verdicts, VNN-LIB."""
