# gnuplot -e "datafile='...dat'; outfile='...png'; repeats=N" bench/iops-ratios.gp
# Clustered bars: ublk IOPS / baseline IOPS (loop for tmpfs and ext4 backing,
# null_blk for null) per workload, both repeats of each copy mode.
set terminal pngcairo size 1400,700 noenhanced font ",10"
set output outfile
set title "ublk / kernel baseline IOPS ratio (qemu TCG guest; >1: ublk faster)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set yrange [0:*]
set grid ytics
set ylabel "ratio"
set xtics rotate by -40 left
set key top right
set arrow from graph 0, first 1.0 to graph 1, first 1.0 nohead dt 2 lw 2 lc rgb "black" front
set arrow from graph 0, first 0.9 to graph 1, first 0.9 nohead dt 3 lw 1 lc rgb "red" front
if (!exists("repeats")) repeats = 2
if (repeats >= 2) {
  plot datafile using 3:xtic(1) title "user_copy r1" lc rgb "#1f77b4", \
       '' using 4 title "user_copy r2" lc rgb "#aec7e8", \
       '' using 6 title "get_data r1" lc rgb "#ff7f0e", \
       '' using 7 title "get_data r2" lc rgb "#ffbb78"
} else {
  plot datafile using 3:xtic(1) title "user_copy" lc rgb "#1f77b4", \
       '' using 6 title "get_data" lc rgb "#ff7f0e"
}
