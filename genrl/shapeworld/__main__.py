"""`python -m genrl.shapeworld`: rewrite the shipped train / eval prompt files from `generate_split()`."""

from genrl.shapeworld.prompts import EVAL_FILE, TRAIN_FILE, write_split_files

if __name__ == "__main__":
    write_split_files()
    print(f"wrote {TRAIN_FILE} and {EVAL_FILE}")
