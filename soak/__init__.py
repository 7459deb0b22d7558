"""`make soak`: a chaos run of the purger on the real services, and a checker of the result."""
