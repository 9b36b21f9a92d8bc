#!/bin/sh
# The smallest PESC program: reads the header from the environment and
# writes one line of output per rank.
echo "rank $PESC_RANK of $PESC_WORLD_SIZE on $(hostname), parameters: $PESC_PARAMETERS"
echo "rank $PESC_RANK says hello" > "$PESC_OUTPUT_DIR/output.txt"
