# Scenario 9 of #19: node reboot. A filesystem PVC and a block PVC, each used
# by a pod (restartPolicy Always, as a workload that must come back). The
# pods write data (a file and its sha256; fio with crc32c verify headers on
# the raw device), then the guest reboots: node.sh stops the node the way a
# shutdown does and exits 75, run.sh boots it again on the same data disk
# (kubelet, containerd and the plugin's data dir). The ublk devices die with
# the kernel: the plugin re-creates them from its records, kubelet stages and
# publishes again, and the pods come back and find their data.
kc create namespace "$K8S_NS" >/dev/null 2>&1
k8s_pvc rb-fs 256Mi Filesystem && k8s_pvc rb-blk 256Mi Block || k8s_fail "create PVCs"
# First start: write (and say WRITTEN). Start after the reboot: check (READ-OK
# or READ-BAD). The block pod's marker sits at 100 MiB, past fio's 64 MiB.
fs_cmd='if [ -f /data/blob.sum ]; then sha256sum -c /data/blob.sum && echo READ-OK || echo READ-BAD; else head -c 16M /dev/urandom > /data/blob && sha256sum /data/blob > /data/sum.tmp && sync && mv /data/sum.tmp /data/blob.sum && sync && echo WRITTEN; fi; sleep 3600'
fio_args='--name=b --filename=/dev/xvda --rw=write --bs=64k --size=64M --direct=1 --ioengine=libaio --iodepth=8 --verify=crc32c --verify_fatal=1'
blk_cmd="if [ \"\$(dd if=/dev/xvda bs=1M skip=100 count=1 2>/dev/null | head -c 7)\" = WRITTEN ]; then fio $fio_args --verify_only > /tmp/fio.log 2>&1 && echo READ-OK || { cat /tmp/fio.log; echo READ-BAD; }; else fio $fio_args --do_verify=1 > /tmp/fio.log 2>&1 && printf WRITTEN | dd of=/dev/xvda bs=1M seek=100 conv=notrunc,fsync 2>/dev/null && echo WRITTEN || { cat /tmp/fio.log; echo WRITE-FAILED; }; fi; grep -o 'err= *[0-9]*' /tmp/fio.log | head -1; sleep 3600"
K8S_POD_RESTART=Always k8s_pod rb-fs rb-fs Filesystem "$fs_cmd" && K8S_POD_RESTART=Always k8s_pod rb-blk rb-blk Block "$blk_cmd" \
  || k8s_fail "create pods"
for p in rb-fs rb-blk; do
  k8s_wait_pod_phase "$K8S_NS" $p Running 300 || { k8s_explain "$K8S_NS" $p; k8s_fail "$p not Running"; }
  n=0
  until kc -n "$K8S_NS" logs $p 2>/dev/null | grep -qE 'WRITTEN|FAILED'; do
    [ $n -lt 120 ] || k8s_fail "$p did not write within 120 s: $(kc -n "$K8S_NS" logs $p 2>&1 | tail -3)"
    sleep 1; n=$((n + 1))
  done
  kc -n "$K8S_NS" logs $p | grep -q WRITTEN || k8s_fail "$p: $(kc -n "$K8S_NS" logs $p 2>&1 | tail -5)"
done
k8s_ok "both pods wrote their data"
pvs=$(kc -n "$K8S_NS" get pvc rb-fs rb-blk -o jsonpath='{.items[*].spec.volumeName}')
plugin=$(k8s_plugin_pod)
uid=$(kc -n "$K8S_NS" get pod rb-fs -o jsonpath='{.metadata.uid}')
boots0=$(wc -l < "$K8S_RUN/share/boots" 2>/dev/null || echo 0)

k8s_step "reboot the node"
t0=$(date +%s%N)
touch "$K8S_RUN/share/reboot"
deadline=$(( $(date +%s) + 300 ))
until [ "$(wc -l < "$K8S_RUN/share/boots" 2>/dev/null || echo 0)" -gt "$boots0" ]; do
  [ "$(date +%s)" -lt $deadline ] || k8s_fail "the guest did not go down within 300 s"
  sleep 1
done
line=$(tail -1 "$K8S_RUN/share/boots")
echo "  $line"
case "$line" in *"rc=75 "*) k8s_ok "the node shut down for the reboot ($(e2e_secs "$t0")s)" ;;
  *) k8s_fail "the guest ended without asking for a reboot: $line" ;; esac
deadline=$(( $(date +%s) + 600 ))
until [ -f "$K8S_RUN/share/node-up" ]; do
  [ "$(date +%s)" -lt $deadline ] || k8s_fail "the node's kubelet did not start within 600 s of the reboot"
  kill -0 "$BOOT_PID" 2>/dev/null || k8s_fail "the guest did not boot again"
  sleep 1
done
echo "measure: reboot to kubelet started: $(e2e_secs "$t0")s"
k8s_wait_node_ready 600 || k8s_fail "node not Ready after the reboot"

k8s_step "the pods come back with their data"
for p in rb-fs rb-blk; do
  deadline=$(( $(date +%s) + 900 ))
  # The container started after the reboot says READ-OK or READ-BAD (or, its
  # data gone, writes again).
  while [ "$(date +%s)" -lt $deadline ]; do
    [ "$(kc -n "$K8S_NS" get pod $p -o jsonpath='{.status.containerStatuses[0].restartCount}' 2>/dev/null)" -ge 1 ] 2>/dev/null \
      && kc -n "$K8S_NS" logs $p 2>/dev/null | grep -qE 'READ-|WRITTEN|FAILED' && break
    sleep 2
  done
  out=$(kc -n "$K8S_NS" logs $p 2>&1)
  echo "$out" | tail -3 | sed "s/^/  $p: /"
  if grep -q READ-OK <<< "$out"; then
    k8s_ok "$p came back with its data ($(e2e_secs "$t0")s after the reboot)"
  else
    k8s_explain "$K8S_NS" $p
    k8s_check_failed "$p: no READ-OK after the reboot"
  fi
  [ $p = rb-blk ] && { grep -q 'err= *0$' <<< "$out" && k8s_ok "rb-blk: fio verify_only err=0" || k8s_check_failed "rb-blk: fio verify errors"; }
  r=$(kc -n "$K8S_NS" get pod $p -o jsonpath='{.status.containerStatuses[0].restartCount}')
  [ "${r:-0}" -ge 1 ] && k8s_ok "$p restarted by the reboot ($r), not replaced" || k8s_check_failed "$p restart count '$r': was it rebooted?"
done
echo "measure: reboot to both pods verified: $(e2e_secs "$t0")s"
[ "$(kc -n "$K8S_NS" get pod rb-fs -o jsonpath='{.metadata.uid}')" = "$uid" ] && k8s_ok "same pod object (uid $uid)" \
  || k8s_check_failed "rb-fs was replaced"
k8s_wait_plugin_ready 300 || k8s_check_failed "plugin not Ready after the reboot"
[ "$(k8s_plugin_pod)" = "$plugin" ] && k8s_ok "plugin pod $plugin restarted in place"
line=$(kc -n "$K8S_RELEASE_NS" logs "$(k8s_plugin_pod)" -c ublk-csi 2>/dev/null | grep -o 'recovery done: .*' | tail -1)
echo "  plugin: $line"
case "$line" in *" 0 failed"*) k8s_ok "the plugin re-created its volumes from its records" ;;
  *) k8s_check_failed "plugin recovery after the reboot: '$line'" ;; esac
fm=$(kc -n "$K8S_NS" get events --field-selector reason=FailedMount -o jsonpath='{range .items[?(@.involvedObject.name=="rb-fs")]}{.message}{"\n"}{end}{range .items[?(@.involvedObject.name=="rb-blk")]}{.message}{"\n"}{end}' 2>/dev/null)
[ -n "$fm" ] && echo "$fm" | head -5 | sed 's/^/  FailedMount (reported, kubelet retries while the plugin starts): /'

k8s_step "clean up: the PVs go through the plugin after the reboot"
kc -n "$K8S_NS" delete pod rb-fs rb-blk --wait=true >/dev/null
kc -n "$K8S_NS" delete pvc rb-fs rb-blk --wait=true --timeout=180s >/dev/null || k8s_check_failed "delete PVCs"
n=0
for pv in $pvs; do
  while kc get pv "$pv" >/dev/null 2>&1 && [ $n -lt 120 ]; do sleep 1; n=$((n + 1)); done
  kc get pv "$pv" >/dev/null 2>&1 && k8s_check_failed "PV $pv still exists" || k8s_ok "PV $pv deleted"
done
k8s_result
