import os

# torch's OpenMP threads spin beside pyarrow and Ray on 2 cores unless told to sleep (DESIGN.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
