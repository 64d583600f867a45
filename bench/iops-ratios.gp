# gnuplot -e "datafile='...dat'; outfile='...png'; repeats=N; modes='user_copy get_data'" bench/iops-ratios.gp
# Clustered bars: ublk IOPS / baseline IOPS (loop for tmpfs and ext4 backing,
# null_blk for null) per workload, both repeats of each copy mode. modes names
# the copy modes in the order of the data file's column triples
# (ratio, r1, r2 per mode).
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
if (!exists("modes")) modes = "user_copy get_data"
# Ten colours (matplotlib's tab10 and its light half); modes past ten reuse them.
dark = "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #7f7f7f #bcbd22 #17becf"
light = "#aec7e8 #ffbb78 #98df8a #ff9896 #c5b0d5 #c49c94 #f7b6d2 #c7c7c7 #dbdb8d #9edae5"
n = words(modes)
if (repeats >= 2) {
  plot for [k=0:2*n-1] datafile using (column(3*(k/2+1) + k%2)):xtic(1) \
       title sprintf("%s r%d", word(modes, k/2+1), k%2+1) \
       lc rgb (k%2 == 0 ? word(dark, (k/2)%10+1) : word(light, (k/2)%10+1))
} else {
  plot for [i=1:n] datafile using (column(3*i)):xtic(1) title word(modes, i) lc rgb word(dark, (i-1)%10+1)
}
