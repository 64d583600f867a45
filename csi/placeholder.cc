namespace ublk_csi {
int csi_placeholder = 0;
}  // namespace ublk_csi
