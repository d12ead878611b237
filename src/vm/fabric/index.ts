// The elastic fabric (vm/fabric): parent templates placed on hosts, pools of
// ready children forked from them, and the hand-out of a customised child on
// request. Its records and the FabricInventory the store implements.
export * from './records.ts';
